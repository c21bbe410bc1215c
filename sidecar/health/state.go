package health

import (
	"math/rand/v2"
	"time"
)

// verdict is what one check says about a host. Envoy tells two kinds of
// failure apart (health_checker_base_impl.cc, setUnhealthy): an "active"
// failure, where the host answered that it is unhealthy, marks it unhealthy
// at once; a "network" failure (connect error, timeout, reset) and a
// retriable HTTP status only count towards unhealthy_threshold.
type verdict uint8

const (
	pass verdict = iota
	// failCounted counts towards unhealthy_threshold (Envoy: NETWORK, or
	// ACTIVE with a retriable status).
	failCounted
	// failImmediate marks a healthy host unhealthy at once (Envoy: ACTIVE).
	failImmediate
)

func (v verdict) String() string {
	switch v {
	case pass:
		return "pass"
	case failCounted:
		return "fail"
	case failImmediate:
		return "fail-immediate"
	}
	return "verdict(?)"
}

// state is the threshold machine of one host. The zero value is a host that
// has never been checked: unhealthy, with its first check pending.
type state struct {
	healthy   bool
	checked   bool   // at least one check has completed
	successes uint32 // consecutive passing checks
	failures  uint32 // consecutive failing checks
}

// next applies one verdict and reports whether the host's health flipped.
//
// Envoy semantics: a host that has never been checked turns healthy on its
// first passing check ("during startup, only a single successful health
// check is required"); afterwards an unhealthy host needs healthyThreshold
// passes in a row, and a healthy host turns unhealthy after
// unhealthyThreshold counted failures in a row or one immediate failure. A
// pass resets the failure run and a failure resets the pass run.
func (s state) next(v verdict, healthyThreshold, unhealthyThreshold uint32) (state, bool) {
	first := !s.checked
	s.checked = true
	was := s.healthy
	if v == pass {
		s.failures = 0
		s.successes++
		if !s.healthy && (first || s.successes >= healthyThreshold) {
			s.healthy = true
		}
	} else {
		s.successes = 0
		s.failures++
		if s.healthy && (v == failImmediate || s.failures >= unhealthyThreshold) {
			s.healthy = false
		}
	}
	return s, s.healthy != was
}

// waitFor is the time from the end of one check to the start of the next
// (Envoy's HealthCheckerImplBase::interval and intervalWithJitter): the
// no-traffic interval while the cluster has seen no traffic, else the
// interval; plus a random [0, interval*percent/100) and a random
// [0, jitter). Never less than a millisecond.
func waitFor(c *Config, traffic bool, rnd *rand.Rand) time.Duration {
	base := c.Interval
	if !traffic {
		base = c.NoTrafficInterval
	}
	d := base
	if c.IntervalJitterPercent > 0 {
		if span := base / 100 * time.Duration(c.IntervalJitterPercent); span > 0 {
			d += time.Duration(rnd.Int64N(int64(span)))
		}
	}
	if c.IntervalJitter > 0 {
		d += time.Duration(rnd.Int64N(int64(c.IntervalJitter)))
	}
	return max(d, time.Millisecond)
}

// initialWait is the delay before a host's first check: a random
// [0, initial_jitter), or none.
func initialWait(c *Config, rnd *rand.Rand) time.Duration {
	if c.InitialJitter <= 0 {
		return 0
	}
	return time.Duration(rnd.Int64N(int64(c.InitialJitter)))
}
