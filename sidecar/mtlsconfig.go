package sidecar

import (
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
