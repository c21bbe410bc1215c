package sidecar

import (
	"time"

	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/sidecar/breaker"
	"github.com/sidemesh/sidemesh/sidecar/outlier"
)

// picked is one attempt's endpoint and the way back for its outcome, as
// grpc-go's balancer.PickResult: whoever picks calls Done exactly once,
// when the attempt ends (an HTTP response body closed, a TCP relay ended,
// or a failure), and Done is the only feedback the data path gives the
// cluster: least-request counters, circuit-breaker slots, outlier results
// and per-endpoint metrics. It is a value, so a pick allocates nothing.
type picked struct {
	Host *Host
	// Panic reports that the cluster balanced over all hosts because too
	// few were eligible (the host may be ejected or failing checks).
	Panic bool
	// Priority and Zone are the host's priority level and zone.
	Priority uint32
	Zone     string

	c     *Cluster
	br    *breaker.Breaker // non-nil: the attempt holds a max_requests slot
	retry bool             // the attempt holds a retry slot of br
}

// DoneInfo is what one attempt came to.
type DoneInfo struct {
	// Fail is why the attempt got no response (failNone when it got one, or
	// when a TCP relay ran). failCanceled and failOverflow are not the
	// endpoint's fault: they count no error.
	Fail failKind
	// Status is the response status (HTTP); a TCP relay reports 200. It
	// picks the per-endpoint status class counted (0: no response).
	Status int
	// Outlier is the result outlier detection counts (0: none; the dialer
	// reports connection outcomes itself).
	Outlier outlier.Result
	// Latency is the time to response headers, observed into the
	// upstream's request-duration histogram when non-zero.
	Latency time.Duration
}

// Done reports the attempt's outcome and releases what the pick took.
func (p picked) Done(d DoneInfo) {
	h := p.Host
	h.Active.Add(-1)
	switch {
	case d.Status > 0:
		h.m.class[statusClass(d.Status)].Inc()
		if d.Status >= 500 {
			h.RqError.Add(1)
		}
	case d.Fail != failNone && d.Fail != failCanceled && d.Fail != failOverflow:
		h.RqError.Add(1)
		h.m.class[0].Inc()
	}
	if d.Outlier != 0 {
		if od := h.outlier(); od != nil {
			od.Record(d.Outlier)
		}
	}
	if d.Latency > 0 {
		p.c.cm.rqDuration.Observe(d.Latency.Seconds())
	}
	if p.retry {
		p.br.ReleaseRetry()
	}
	if p.br != nil {
		p.br.ReleaseRequest()
	}
}

// releaseRetry gives back the attempt's retry slot before Done, so that a
// next attempt can take one.
func (p *picked) releaseRetry() {
	if p.retry {
		p.br.ReleaseRetry()
		p.retry = false
	}
}

// pick chooses a host, avoiding `avoid` (the previous attempt's host) when
// another one exists, and counts the attempt on it (Active, RqTotal) until
// Done. Lock-free and allocation-free: one atomic load and the picker.
func (c *Cluster) pick(info *balancer.PickInfo, avoid *Host) (picked, error) {
	st := c.state.Load()
	if st.n == 0 {
		return picked{}, ErrNoHealthyUpstream
	}
	if !c.hadTraffic.Load() {
		c.hadTraffic.Store(true)
	}
	lv := st.chooseLevel(info)
	n := len(lv.hosts)
	if n == 0 {
		return picked{}, ErrNoHealthyUpstream
	}
	if lv.zr != nil {
		h, zone, ok := lv.zr.pick(info)
		for k := 0; ok && k < 3 && h == avoid && n > 1; k++ {
			h, zone, ok = lv.zr.pick(info)
		}
		if !ok {
			return picked{}, ErrNoHealthyUpstream
		}
		h.Active.Add(1)
		h.RqTotal.Add(1)
		return picked{Host: h, Panic: lv.panic, Priority: lv.priority, Zone: zone, c: c}, nil
	}
	i := lv.picker.Pick(info)
	if i < 0 {
		return picked{}, ErrNoHealthyUpstream
	}
	if avoid != nil && n > 1 && lv.hosts[i] == avoid {
		for k := 0; k < 3 && lv.hosts[i] == avoid; k++ {
			i = lv.picker.Pick(info)
		}
		if lv.hosts[i] == avoid {
			i = (i + 1) % n
		}
	}
	h := lv.hosts[i]
	h.Active.Add(1)
	h.RqTotal.Add(1)
	return picked{Host: h, Panic: lv.panic, Priority: lv.priority, Zone: lv.zones[i], c: c}, nil
}

// breakerPicker is the circuit breaker around the cluster's picker for
// HTTP requests: an attempt takes a max_requests slot before the pick and
// gives it back in Done. One request keeps one breaker for all its
// attempts, even if the control plane swaps the cluster's.
type breakerPicker struct {
	c  *Cluster
	br *breaker.Breaker
}

// guarded returns the cluster's picker behind the breaker now in force.
func (c *Cluster) guarded() breakerPicker { return breakerPicker{c: c, br: c.breaker()} }

// pick takes a request slot and picks. With retry set the caller holds a
// retry slot (acquireRetry), which the pick takes over: Done, or a failed
// pick, releases it.
func (g breakerPicker) pick(info *balancer.PickInfo, avoid *Host, retry bool) (picked, error) {
	if err := g.br.AcquireRequest(); err != nil {
		if retry {
			g.br.ReleaseRetry()
		}
		g.c.noteOverflow(err)
		return picked{}, err
	}
	p, err := g.c.pick(info, avoid)
	if err != nil {
		g.br.ReleaseRequest()
		if retry {
			g.br.ReleaseRetry()
		}
		return picked{}, err
	}
	p.br, p.retry = g.br, retry
	return p, nil
}

// acquireRetry takes a retry slot for the next attempt (max_retries or the
// retry budget).
func (g breakerPicker) acquireRetry() error {
	err := g.br.AcquireRetry()
	if err != nil {
		g.c.noteOverflow(err)
	}
	return err
}

// releaseRetry gives back a retry slot no attempt took over.
func (g breakerPicker) releaseRetry() { g.br.ReleaseRetry() }
