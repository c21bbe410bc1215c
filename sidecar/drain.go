package sidecar

import (
	"context"
	"net/http"
	"sync/atomic"
	"time"
)

// activity counts the outbound work in flight (HTTP requests and TCP
// connections of the outbound and transparent listeners) and, while the
// sidecar drains, when the last of it ended: the drain ends once the app
// has made no outbound call for drain.quiet_period.
type activity struct {
	draining *atomic.Bool
	inflight atomic.Int64
	lastEnd  atomic.Int64 // unix nanoseconds; written only while draining
}

func (a *activity) begin() { a.inflight.Add(1) }

func (a *activity) end() {
	if a.draining.Load() {
		a.lastEnd.Store(time.Now().UnixNano())
	}
	a.inflight.Add(-1)
}

// idleSince reports whether nothing is in flight and, if so, since when
// (the later of the last end and after).
func (a *activity) idleSince(after time.Time) (time.Time, bool) {
	if a.inflight.Load() > 0 {
		return time.Time{}, false
	}
	last := time.Unix(0, a.lastEnd.Load())
	if a.inflight.Load() > 0 { // one began and ended between the loads
		return time.Time{}, false
	}
	if last.After(after) {
		return last, true
	}
	return after, true
}

// track counts each request h serves as outbound activity.
func (a *activity) track(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.begin()
		defer a.end()
		h.ServeHTTP(w, r)
	})
}

// drainTick is how often the drain looks at the outbound activity.
const drainTick = 50 * time.Millisecond

// drainInbound runs the inbound half of the drain: the inbound listener
// keeps serving for drain.inbound_grace, answering with Connection: close
// (HTTP/1; GOAWAY on HTTP/2), then closes. Requests in flight on it finish
// (bounded by deadline); inboundDone is closed when they have.
func (s *Sidecar) drainInbound(ctx context.Context, deadline time.Time) (closedAt time.Time, inboundDone <-chan struct{}) {
	done := make(chan struct{})
	if s.inboundLn == nil {
		close(done)
		return time.Now(), done
	}
	s.inboundClosing.Store(true)
	grace := time.NewTimer(min(*s.config().Drain.InboundGrace, time.Until(deadline)))
	select {
	case <-grace.C:
	case <-ctx.Done():
		grace.Stop()
	}
	if s.inboundSrv == nil {
		s.inboundLn.Close() // TCP inbound: no http.Server closes it
		close(done)
		return time.Now(), done
	}
	closedAt = time.Now()
	go func() {
		defer close(done)
		dctx, cancel := context.WithDeadline(ctx, deadline)
		defer cancel()
		if err := s.inboundSrv.Shutdown(dctx); err != nil {
			_ = s.inboundSrv.Close()
		}
	}()
	return closedAt, done
}

// waitOutboundQuiet returns once the outbound listeners have been idle for
// drain.quiet_period after inboundClosed, at deadline, or when ctx ends.
func (s *Sidecar) waitOutboundQuiet(ctx context.Context, inboundClosed, deadline time.Time) {
	quiet := *s.config().Drain.QuietPeriod
	t := time.NewTicker(min(drainTick, max(quiet/4, time.Millisecond)))
	defer t.Stop()
	for {
		now := time.Now()
		if !now.Before(deadline) {
			s.log.Info("drain timeout reached", "outbound_in_flight", s.act.inflight.Load())
			return
		}
		if since, idle := s.act.idleSince(inboundClosed); idle && now.Sub(since) >= quiet {
			return
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}
