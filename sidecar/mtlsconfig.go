package sidecar

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"

	"github.com/sidemesh/sidemesh/mtls"
)

// MTLSConfig is the `mtls` key: mutual TLS between sidecars.
type MTLSConfig struct {
	// Mode is strict (inbound requires a mesh client certificate),
	// permissive (inbound takes mTLS and plaintext) or off (default).
	Mode string `yaml:"mode"`
	// CertFile, KeyFile and CAFile are the identity without Consul
	// discovery (reloaded when they change); with Consul the leaf and
	// roots come from the agent's Connect CA.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	CAFile   string `yaml:"ca_file"`
}

// XDSServerTLS is xds_server.tls.
type XDSServerTLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	CAFile   string `yaml:"ca_file"`
}

func (t *XDSServerTLS) validate(p string) error {
	if t == nil {
		return nil
	}
	for _, kv := range [][2]string{{"cert_file", t.CertFile}, {"key_file", t.KeyFile}, {"ca_file", t.CAFile}} {
		if kv[1] == "" {
			return bad(p+"."+kv[0], kv[1], "must be set (the server's certificate, its key, and the CA that signs client certificates)")
		}
	}
	return nil
}

// on reports whether mTLS is on (strict or permissive).
func (m *MTLSConfig) on() bool {
	return m != nil && (m.Mode == mtls.ModeStrict || m.Mode == mtls.ModePermissive)
}

// files reports whether the identity comes from files.
func (m *MTLSConfig) files() bool { return m.CertFile != "" || m.KeyFile != "" || m.CAFile != "" }

func (c *Config) validateMTLS() error {
	m := c.MTLS
	if m == nil {
		return nil
	}
	switch m.Mode {
	case mtls.ModeOff, mtls.ModeStrict, mtls.ModePermissive:
	default:
		return bad("mtls.mode", m.Mode, "must be one of strict, permissive, off")
	}
	if m.files() {
		for _, kv := range [][2]string{{"mtls.cert_file", m.CertFile}, {"mtls.key_file", m.KeyFile}, {"mtls.ca_file", m.CAFile}} {
			if kv[1] == "" {
				return bad(kv[0], kv[1], "must be set with the other mtls files (cert_file, key_file, ca_file go together)")
			}
		}
	}
	if !m.on() {
		return nil
	}
	if !m.files() && c.Discovery.Consul == nil {
		return bad("mtls.mode", m.Mode, "needs an identity: Consul discovery (Connect CA) or mtls.cert_file, key_file and ca_file")
	}
	if !m.files() && c.Service == nil {
		return bad("mtls.mode", m.Mode, "with the Connect CA needs service.name: the identity is the local service's")
	}
	return nil
}

// serverTLS is the xDS server's TLS: its certificate, and client
// certificates required and verified against ca_file.
func (t *XDSServerTLS) serverTLS() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("%w: xds_server.tls.cert_file/key_file: %v", ErrConfig, err)
	}
	caPEM, err := os.ReadFile(t.CAFile)
	if err != nil {
		return nil, fmt.Errorf("%w: xds_server.tls.ca_file: %v", ErrConfig, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%w: xds_server.tls.ca_file: %q holds no PEM certificate", ErrConfig, t.CAFile)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		NextProtos:   []string{"h2"}, // gRPC
	}, nil
}

// listenXDS binds xds_server.listen, behind TLS when xds_server.tls is set
// (only holders of a client certificate of its CA read the stream).
func listenXDS(x *XDSServer) (net.Listener, error) {
	var cfg *tls.Config
	if x.TLS != nil {
		var err error
		if cfg, err = x.TLS.serverTLS(); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", x.Listen)
	if err != nil {
		return nil, fmt.Errorf("xds_server.listen %s: %w", x.Listen, err)
	}
	if cfg != nil {
		ln = tls.NewListener(ln, cfg)
	}
	return ln, nil
}
