package sidecar

import (
	"fmt"
	"net"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/xds"
)

// startExtras binds and starts the embedded xDS server. Called from Start
// after the data-plane listeners are bound and before anything serves.
func (s *Sidecar) startExtras() error {
	if x := s.cfg.XDSServer; x != nil {
		ln, err := net.Listen("tcp", x.Listen)
		if err != nil {
			return fmt.Errorf("xds_server.listen %s: %w", x.Listen, err)
		}
		srv, err := xds.NewServer(xds.ServerOptions{Logger: s.log.With("component", "xds-server"), Source: s.src, Settings: xdsSettings(s.cfg)})
		if err != nil {
			ln.Close()
			return err
		}
		s.xdsSrv, s.xdsLn = srv, ln
		s.goServe(func() error { return srv.Serve(ln) })
	}
	return nil
}

// stopExtras runs last on shutdown.
func (s *Sidecar) stopExtras() {
	if s.xdsSrv != nil {
		s.xdsSrv.Stop()
	}
}

// newXDSSource is discovery.xds: our ADS client, whose CDS settings apply
// to upstreams for every key the config file leaves out.
func (s *Sidecar) newXDSSource() (discovery.Source, error) {
	cc := *s.cfg.Discovery.XDS
	cc.NodeID = s.cfg.Node
	if s.cfg.Service != nil {
		cc.Cluster = s.cfg.Service.Name
	}
	cli, err := xds.NewClient(cc, xds.ClientOptions{Logger: s.log.With("component", "xds-client")})
	if err != nil {
		return nil, err
	}
	s.xdsCli = cli
	return cli, nil
}

// watchClusterSettings subscribes each cluster to its CDS settings.
func (s *Sidecar) watchClusterSettings() {
	if s.xdsCli == nil {
		return
	}
	for _, c := range s.clusters {
		c := c
		cancel := s.xdsCli.WatchCluster(c.Name, func(cs xds.ClusterSettings) { c.applySettings(cs) })
		s.closers = append(s.closers, cancel)
	}
}
