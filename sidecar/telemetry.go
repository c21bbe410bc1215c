package sidecar

import (
	"context"
	"time"

	"github.com/sidemesh/sidemesh/tracing"
)

// setupTracing builds the tracer provider (a nil config means off; the
// nil provider is a working no-op).
func (s *Sidecar) setupTracing() error {
	if s.cfg.Tracing == nil {
		return nil
	}
	name := s.cfg.Node
	if s.cfg.Service != nil {
		name = s.cfg.Service.Name
	}
	tp, err := tracing.Setup(context.Background(), s.cfg.Tracing,
		tracing.Resource{ServiceName: name, InstanceID: s.cfg.Node, Version: Version}, s.log) // Setup adds component=tracing
	if err != nil {
		return err
	}
	s.tp = tp
	return nil
}

// shutdownTracing flushes and stops the tracer provider (last on shutdown).
func (s *Sidecar) shutdownTracing() {
	if s.tp == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.tp.Shutdown(ctx)
}
