package tracing

import (
	"context"
	"testing"
)

// SetLocality records the endpoint's priority, and its zone when it has one.
func TestSetLocality(t *testing.T) {
	for _, tc := range []struct {
		name     string
		priority uint32
		zone     string
		want     map[string]any
	}{
		{"failover priority with a zone", 1, "eu-1b", map[string]any{"sidemesh.upstream.priority": 1, "sidemesh.upstream.zone": "eu-1b"}},
		{"no zone", 0, "", map[string]any{"sidemesh.upstream.priority": 0, "sidemesh.upstream.zone": nil}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, rec := recordingProvider(t, 1, nil)
			_, span := p.StartTCP(context.Background(), Upstream{Service: "db", LBPolicy: "round_robin"})
			SetLocality(span, tc.priority, tc.zone)
			EndTCP(span, 0, 0, OutcomeOK)
			checkAttrs(t, onlySpan(t, rec), tc.want)
		})
	}
}
