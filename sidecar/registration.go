package sidecar

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"

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

// registration describes this instance for Consul.
func (s *Sidecar) registration() (consul.Registration, error) {
	sv := s.cfg.Service
	if sv.Inbound == "" {
		return consul.Registration{}, fmt.Errorf("%w: service.inbound: must be set to register in Consul (it is the address other sidecars reach)", ErrConfig)
	}
	host, port := s.inboundHostPort()
	reg := consul.Registration{
		ID: s.cfg.Node, Name: sv.Name, Address: host, Port: port, Weight: sv.Weight, Tags: sv.Tags,
		Meta: map[string]string{"sidemesh_version": Version},
	}
	check := &consul.Check{HTTP: "http://" + s.adminLn.Addr().String() + "/ready", Interval: 5 * time.Second, Timeout: 2 * time.Second}
	if hc := sv.HealthCheck; hc != nil && hc.HTTP != nil {
		check.HTTP = "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(sv.Port)) + hc.HTTP.Path
		check.Interval, check.Timeout = hc.Interval, hc.Timeout
	}
	reg.Check = check
	if err := reg.Validate("service"); err != nil {
		return reg, err
	}
	return reg, nil
}

func (s *Sidecar) inboundHostPort() (string, int) {
	addr := s.inboundLn.Addr().(*net.TCPAddr)
	host, _, _ := net.SplitHostPort(s.cfg.Service.Inbound)
	return host, addr.Port
}

// stopRegistration runs first on shutdown: deregister from Consul so other
// sidecars stop sending here while we drain.
func (s *Sidecar) stopRegistration() {
	if s.regStop != nil {
		s.regStop()
		<-s.regDone
	}
}
