package xds

import (
	"fmt"

	"github.com/sidemesh/sidemesh/upstream"
)

// Upstream is one service the server serves and the client watches: its
// name (the Cluster's, and the ClusterLoadAssignment's) and its settings,
// in the one model of upstream settings (package upstream).
//
// The server translates what the settings carry and leaves out what they
// leave out (Envoy's default then applies): callers fill defaults first
// (upstream.Settings.SetDefaults) to serve effective values.
type Upstream struct {
	Service  string
	Settings upstream.Settings
}

// Validate checks what the translation relies on; path names the upstream
// in error messages (e.g. "upstreams[0]"). Errors wrap ErrInvalidSettings.
func (u *Upstream) Validate(path string) error {
	if u.Service == "" {
		return fmt.Errorf("%w: %s.service: must not be empty", ErrInvalidSettings, path)
	}
	if err := u.Settings.Validate(path); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidSettings, err)
	}
	return nil
}

// Defaults returns an upstream named service with every setting at its
// default (upstream.Settings.SetDefaults): what the server serves for an
// upstream whose config says nothing but its name.
func Defaults(service string) Upstream {
	u := Upstream{Service: service}
	u.Settings.SetDefaults()
	return u
}
