package sidecar

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/discovery/consul"
)

// startRegistration registers this instance in Consul (discovery.consul
// with a service section) and keeps it registered until stopRegistration.
// Called from Start after the inbound listener is bound.
func (s *Sidecar) startRegistration() error {
	if s.consul != nil && s.cfg.Service != nil {
		reg, err := s.registration()
		if err != nil {
			return err
		}
		r, err := consul.NewRegistrar(*s.cfg.Discovery.Consul, reg, consul.RegistrarOptions{Logger: s.log})
		if err != nil {
			return err
		}
		ctx, cancel := context.WithCancel(context.Background())
		s.reg, s.regStop, s.regDone = r, cancel, make(chan struct{})
		go func() {
			defer close(s.regDone)
			if err := r.Run(ctx); err != nil {
				s.log.Error("consul deregistration failed", "err", err)
			}
		}()
	}
	return nil
}

// registration describes this instance for Consul: the registered address
// and the inbound port; a check on /ready through the probe listener (or
// admin when there is none), which also covers service.health_check since
// the sidecar runs the app's check itself.
func (s *Sidecar) registration() (consul.Registration, error) {
	sv := s.cfg.Service
	if sv.Inbound == "" {
		return consul.Registration{}, fmt.Errorf("%w: service.inbound: must be set to register in Consul (it is the address other sidecars reach)", ErrConfig)
	}
	port := s.inboundLn.Addr().(*net.TCPAddr).Port
	reg := consul.Registration{
		ID: s.cfg.Node, Name: sv.Name, Address: s.regAddr, Port: port, Weight: sv.Weight, Tags: sv.Tags,
		Meta: map[string]string{"sidemesh_version": Version},
	}
	if s.mesh != nil {
		reg.Meta[discovery.MetaMTLS] = "true" // clients originate mTLS to this instance
	}
	check := &consul.Check{HTTP: "http://" + s.adminLn.Addr().String() + "/ready", Interval: 5 * time.Second, Timeout: 2 * time.Second,
		DeregisterCriticalServiceAfter: *sv.DeregisterCriticalAfter}
	if s.probeLn != nil {
		check.HTTP = "http://" + net.JoinHostPort(s.regAddr, strconv.Itoa(s.probeLn.Addr().(*net.TCPAddr).Port)) + "/ready"
	}
	if hc := sv.HealthCheck; hc != nil {
		check.Interval = hc.Interval
	}
	reg.Check = check
	if err := reg.Validate("service"); err != nil {
		return reg, err
	}
	return reg, nil
}

// registeredAddress is the address other hosts reach this instance at:
// service.address, else the inbound listener's IP when it is a specific
// one, else detected from the route to the Consul agent.
func registeredAddress(cfg *Config) (string, error) {
	sv := cfg.Service
	if sv.Address != "" {
		return sv.Address, nil
	}
	if host, _, err := net.SplitHostPort(sv.Inbound); err == nil && host != "" {
		if ip, err := netip.ParseAddr(host); err != nil || !ip.IsUnspecified() {
			return host, nil
		}
	}
	ip, err := consul.DetectAddress(cfg.Discovery.Consul.Address)
	if err != nil {
		return "", fmt.Errorf("%w: service.address: not set and could not be detected (%v); set it, e.g. address: ${POD_IP}", ErrConfig, err)
	}
	return ip.String(), nil
}

// stopRegistration runs first on shutdown: deregister from Consul so other
// sidecars stop sending here while we drain.
func (s *Sidecar) stopRegistration() {
	if s.regStop != nil {
		s.regStop()
		<-s.regDone
	}
}
