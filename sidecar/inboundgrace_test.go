package sidecar

import (
	"context"
	"net/http"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sidemesh/sidemesh/discovery/consul"
)

// A deregistered instance's inbound keeps serving for the grace (bounded by
// drain.timeout and the shutdown's context); an unregistered one does not
// wait.
func TestInboundGrace(t *testing.T) {
	for _, tc := range []struct {
		name       string
		registered bool
		drain      time.Duration
		ctxTimeout time.Duration
		want       time.Duration
	}{
		{"registered", true, 5 * time.Second, time.Minute, inboundGraceTime},
		{"bounded by drain.timeout", true, 500 * time.Millisecond, time.Minute, 500 * time.Millisecond},
		{"bounded by the context", true, 5 * time.Second, 300 * time.Millisecond, 300 * time.Millisecond},
		{"not registered", false, 5 * time.Second, time.Minute, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s := &Sidecar{inboundSrv: &http.Server{}, cfg: &Config{Drain: &DrainConfig{Timeout: tc.drain}}}
				if tc.registered {
					s.reg = &consul.Registrar{}
				}
				ctx, cancel := context.WithTimeout(context.Background(), tc.ctxTimeout)
				defer cancel()
				start := time.Now()
				s.inboundGrace(ctx)
				if got := time.Since(start); got != tc.want {
					t.Fatalf("inbound served %v after deregistration, want %v", got, tc.want)
				}
			})
		})
	}
}
