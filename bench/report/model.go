package main

import (
	"math"
	"strconv"
	"strings"
)

// SchemaVersion names the JSON layout; it changes when a field changes
// meaning or goes away (adding fields keeps it).
const SchemaVersion = "sidemesh-bench/1"

// Report is the JSON document.
type Report struct {
	Schema      string            `json:"schema"`
	Started     string            `json:"started"` // RFC 3339, UTC
	Machine     Machine           `json:"machine"`
	Pinning     string            `json:"pinning"`
	LoadAverage LoadAverage       `json:"load_average"`
	Versions    map[string]string `json:"versions"`
	Settings    map[string]string `json:"settings"`
	Setups      []Setup           `json:"setups"`
}

// Machine is what the run ran on.
type Machine struct {
	CPUs  int    `json:"cpus"`
	Model string `json:"model"`
}

// LoadAverage is /proc/loadavg's 1, 5 and 15 minute figures before the
// first run and after the last.
type LoadAverage struct {
	Before []Num `json:"before"`
	After  []Num `json:"after"`
}

// Setup is one row of the tables: a client, maybe a proxy, a backend.
type Setup struct {
	Name     string  `json:"name"`
	Group    string  `json:"group"` // http1, h2c or grpc
	Label    string  `json:"label"`
	Baseline bool    `json:"baseline"` // the group's direct run (no proxy)
	Skipped  string  `json:"skipped,omitempty"`
	Best     *Best   `json:"best,omitempty"`
	Rounds   []Round `json:"rounds"`
}

// Round holds one round's raw runs by kind (closed, open, h2load, stream).
type Round struct {
	Round int            `json:"round"`
	Runs  map[string]Run `json:"runs"`
}

// CPU is the proxy's CPU time per request in microseconds.
type CPU struct {
	Total Num `json:"total"`
	User  Num `json:"user"`
	Sys   Num `json:"sys"`
}

// Latency is a set of percentiles in microseconds.
type Latency struct {
	P50  Num `json:"p50"`
	P90  Num `json:"p90"`
	P99  Num `json:"p99"`
	P999 Num `json:"p999"`
	Max  Num `json:"max"`
}

// Stream is the streaming run's best.
type Stream struct {
	MBPerS     Num `json:"mb_per_s"`
	VsDirect   Num `json:"vs_direct"`
	CPUUsPerMB Num `json:"cpu_us_per_mb"`
}

// Best is the best of a setup's rounds, cell by cell, as in the markdown
// tables: highest throughput, lowest CPU, lowest percentile each. Fields
// that do not apply (no proxy, no such run) are null.
type Best struct {
	RPS                 Num      `json:"rps"`
	VsDirect            Num      `json:"vs_direct"`
	CPUSaturated        *CPU     `json:"cpu_us_per_req_saturated"`
	CPUAtRate           *CPU     `json:"cpu_us_per_req_at_rate"`
	ProxyCoresSaturated Num      `json:"proxy_cores_saturated"`
	RSSKB               Num      `json:"rss_kb"`
	Rate                Num      `json:"rate"`
	LatencyAtRate       *Latency `json:"latency_us_at_rate"`
	AddedAtRate         *Latency `json:"added_latency_us_at_rate"`
	LatencySaturated    *Latency `json:"latency_us_saturated"`
	Stream              *Stream  `json:"stream"`
	Errors              Num      `json:"errors"`
}

// Num is a number that encodes NaN as JSON null.
type Num float64

// MarshalJSON writes the shortest decimal form, or null.
func (n Num) MarshalJSON() ([]byte, error) {
	f := float64(n)
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return []byte("null"), nil
	}
	return strconv.AppendFloat(nil, f, 'f', -1, 64), nil
}

// UnmarshalJSON reads a number or null (NaN).
func (n *Num) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*n = Num(math.NaN())
		return nil
	}
	f, err := strconv.ParseFloat(string(b), 64)
	*n = Num(f)
	return err
}

var nan = Num(math.NaN())

// groupOf returns the group of a setup name: the h2c-* and grpc-* setups
// have their own, everything else is HTTP/1.1.
func groupOf(name string) string {
	switch {
	case strings.HasPrefix(name, "h2c-"):
		return "h2c"
	case strings.HasPrefix(name, "grpc-"):
		return "grpc"
	}
	return "http1"
}

// baselineOf is the direct setup of a group.
func baselineOf(group string) string {
	if group == "http1" {
		return "direct"
	}
	return group + "-direct"
}

// throughputKind is the kind of run a group measures throughput with.
func throughputKind(group string) string {
	if group == "h2c" {
		return "h2load"
	}
	return "closed"
}

// SetupSpec is what the caller says about a setup: its name, its label,
// and why it was skipped if it was.
type SetupSpec struct {
	Name, Label, Skipped string
}

// build assembles the report's setups from the raw runs, in spec order.
func build(specs []SetupSpec, runs map[string]rounds) []Setup {
	var out []Setup
	for _, sp := range specs {
		g := groupOf(sp.Name)
		s := Setup{Name: sp.Name, Group: g, Label: sp.Label, Baseline: sp.Name == baselineOf(g), Skipped: sp.Skipped, Rounds: []Round{}}
		rs := runs[sp.Name]
		byRound := map[int]map[string]Run{}
		var order []int
		for kind, list := range rs {
			for _, r := range list {
				if byRound[r.round] == nil {
					byRound[r.round] = map[string]Run{}
					order = append(order, r.round)
				}
				byRound[r.round][kind] = r.run
			}
		}
		for i := 1; len(order) > 0 && i <= maxInt(order); i++ {
			if m, ok := byRound[i]; ok {
				s.Rounds = append(s.Rounds, Round{Round: i, Runs: m})
			}
		}
		if len(rs) > 0 {
			s.Best = bestOf(g, s.Baseline, rs)
		}
		out = append(out, s)
	}
	// Ratios and added latency against each group's baseline.
	base := map[string]*Best{}
	for i := range out {
		if out[i].Baseline && out[i].Best != nil {
			base[out[i].Group] = out[i].Best
		}
	}
	for i := range out {
		b, d := out[i].Best, base[out[i].Group]
		if b == nil || d == nil {
			continue
		}
		b.VsDirect = Num(float64(b.RPS) / float64(d.RPS))
		if b.Stream != nil && d.Stream != nil {
			b.Stream.VsDirect = Num(float64(b.Stream.MBPerS) / float64(d.Stream.MBPerS))
		}
		if b.LatencyAtRate != nil && d.LatencyAtRate != nil {
			l, dl := b.LatencyAtRate, d.LatencyAtRate
			b.AddedAtRate = &Latency{P50: l.P50 - dl.P50, P90: l.P90 - dl.P90, P99: l.P99 - dl.P99, P999: l.P999 - dl.P999, Max: l.Max - dl.Max}
		}
	}
	return out
}

func maxInt(xs []int) int {
	m := xs[0]
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}

func cpuOf(r Run) *CPU {
	if r == nil {
		return nil
	}
	t, s := r.num("cpu_us_per_req"), r.num("sys_us_per_req")
	return &CPU{Total: Num(t), User: Num(t - s), Sys: Num(s)}
}

func latencyOf(runs []roundRun) *Latency {
	if len(runs) == 0 {
		return nil
	}
	l := &Latency{
		P50:  Num(best(runs, "p50_us", false)),
		P90:  Num(best(runs, "p90_us", false)),
		P99:  Num(best(runs, "p99_us", false)),
		P999: Num(best(runs, "p999_us", false)),
		Max:  Num(best(runs, "max_us", false)),
	}
	if math.IsNaN(float64(l.P50)) {
		return nil
	}
	return l
}

func bestOf(group string, baseline bool, rs rounds) *Best {
	tp, open, stream := rs[throughputKind(group)], rs["open"], rs["stream"]
	b := &Best{
		RPS: Num(best(tp, "rps", true)), VsDirect: nan,
		ProxyCoresSaturated: nan, RSSKB: nan, Rate: nan,
		LatencyAtRate:    latencyOf(open),
		LatencySaturated: latencyOf(tp),
	}
	if len(open) > 0 {
		b.Rate = Num(best(open, "target_rps", true))
	}
	if !baseline {
		b.CPUSaturated = cpuOf(bestRun(tp, "cpu_us_per_req", false))
		b.CPUAtRate = cpuOf(bestRun(open, "cpu_us_per_req", false))
		b.ProxyCoresSaturated = Num(best(tp, "cpu_cores", true))
		b.RSSKB = Num(best(tp, "rss_kb", true))
	}
	if len(stream) > 0 {
		b.Stream = &Stream{MBPerS: Num(best(stream, "mb_per_s", true)), VsDirect: nan, CPUUsPerMB: nan}
		if !baseline {
			b.Stream.CPUUsPerMB = Num(best(stream, "cpu_us_per_mb", false))
		}
	}
	errs := 0.0
	for _, list := range rs {
		errs += sum(list, "errors") + sum(list, "dropped")
	}
	b.Errors = Num(errs)
	return b
}
