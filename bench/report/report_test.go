package main

import (
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Raw runs as bench/run.sh leaves them: two rounds of an HTTP/1.1 pair,
// one round of the gRPC pair, an h2load run, an empty file of a failed run
// and an error file.
var rawRuns = map[string]string{
	"direct.1.closed":        "label=direct mode=closed conns=32 secs=5.000 requests=200000 errors=0 dropped=0 rps=40000.0 p50_us=700.0 p90_us=900.0 p99_us=1500.0 p999_us=2500.0 max_us=4000.0 svc_p50_us=700.0 svc_p99_us=1500.0 load_cores=1.000 cpu_busy=0.02/1.00",
	"direct.1.open":          "label=direct mode=open conns=32 secs=5.000 requests=10000 errors=0 dropped=0 rps=2000.0 p50_us=100.0 p90_us=150.0 p99_us=300.0 p999_us=900.0 max_us=1500.0 svc_p50_us=90.0 svc_p99_us=280.0 target_rps=2000.0 skipped=0 sched_lag_p50_us=500.0 sched_lag_p99_us=1100.0 load_cores=0.200 cpu_busy=0.01/0.20",
	"direct.2.closed":        "label=direct mode=closed conns=32 secs=5.000 requests=210000 errors=0 dropped=0 rps=42000.0 p50_us=680.0 p90_us=880.0 p99_us=1400.0 p999_us=2400.0 max_us=3900.0 svc_p50_us=680.0 svc_p99_us=1400.0 load_cores=1.000 cpu_busy=0.02/1.00",
	"direct.2.open":          "label=direct mode=open conns=32 secs=5.000 requests=10000 errors=0 dropped=2 rps=2000.0 p50_us=110.0 p90_us=140.0 p99_us=280.0 p999_us=950.0 max_us=1400.0 svc_p50_us=90.0 svc_p99_us=280.0 target_rps=2000.0 skipped=0 load_cores=0.200 cpu_busy=0.01/0.20",
	"sidemesh.1.closed":      "label=sidemesh mode=closed conns=32 secs=5.000 requests=100000 errors=1 dropped=0 rps=20000.0 p50_us=1500.0 p90_us=1900.0 p99_us=2500.0 p999_us=5000.0 max_us=9000.0 svc_p50_us=1500.0 svc_p99_us=2500.0 cpu_s=5.00 cpu_us_per_req=50.0 sys_us_per_req=20.0 cpu_cores=1.000 rss_kb=30000 hwm_kb=31000 load_cores=0.600 cpu_busy=1.00/0.60",
	"sidemesh.1.open":        "label=sidemesh mode=open conns=32 secs=5.000 requests=10000 errors=0 dropped=0 rps=2000.0 p50_us=200.0 p90_us=300.0 p99_us=700.0 p999_us=1500.0 max_us=3000.0 svc_p50_us=190.0 svc_p99_us=690.0 target_rps=2000.0 skipped=0 cpu_s=1.00 cpu_us_per_req=100.0 sys_us_per_req=40.0 cpu_cores=0.200 rss_kb=25000 hwm_kb=31000 load_cores=0.200 cpu_busy=0.20/0.20",
	"sidemesh.2.closed":      "label=sidemesh mode=closed conns=32 secs=5.000 requests=95000 errors=0 dropped=0 rps=19000.0 p50_us=1600.0 p90_us=2000.0 p99_us=2600.0 p999_us=5100.0 max_us=9100.0 svc_p50_us=1600.0 svc_p99_us=2600.0 cpu_s=4.56 cpu_us_per_req=48.0 sys_us_per_req=18.0 cpu_cores=0.960 rss_kb=31000 hwm_kb=32000 load_cores=0.600 cpu_busy=1.00/0.60",
	"sidemesh.2.open":        "",
	"sidemesh.err":           "loadgen sidemesh: 1 errors, last: EOF",
	"h2c-direct.1.h2load":    "label=h2c-direct mode=h2load conns=8 secs=5.000 requests=500000 errors=0 dropped=0 rps=100000.0 p50_us=600.0 p90_us=900.0 p99_us=1500.0 p999_us=2000.0 max_us=3000.0 svc_p50_us=600.0 svc_p99_us=1500.0 load_cores=1.000 cpu_busy=0.20/1.00",
	"h2c-sidemesh.1.h2load":  "label=h2c-sidemesh mode=h2load conns=8 secs=5.000 requests=50000 errors=0 dropped=0 rps=10000.0 p50_us=6000.0 p90_us=9000.0 p99_us=15000.0 p999_us=20000.0 max_us=30000.0 svc_p50_us=6000.0 svc_p99_us=15000.0 cpu_s=5.00 cpu_us_per_req=100.0 sys_us_per_req=30.0 cpu_cores=1.000 rss_kb=40000 hwm_kb=41000 load_cores=0.300 cpu_busy=1.00/0.30",
	"grpc-direct.1.closed":   "label=grpc-direct mode=closed conns=8 secs=5.000 requests=150000 errors=0 dropped=0 rps=30000.0 p50_us=3000.0 p90_us=6000.0 p99_us=11000.0 p999_us=17000.0 max_us=21000.0 svc_p50_us=3000.0 svc_p99_us=11000.0 load_cores=1.000 cpu_busy=0.09/1.00",
	"grpc-direct.1.open":     "label=grpc-direct mode=open conns=8 secs=5.000 requests=10000 errors=0 dropped=0 rps=2000.0 p50_us=220.0 p90_us=360.0 p99_us=980.0 p999_us=3100.0 max_us=4600.0 svc_p50_us=200.0 svc_p99_us=920.0 target_rps=2000.0 skipped=0 load_cores=0.320 cpu_busy=0.04/0.34",
	"grpc-direct.1.stream":   "label=grpc-direct mode=stream conns=1 secs=5.000 requests=38000 errors=0 dropped=0 rps=7600.0 p50_us=NaN p90_us=NaN p99_us=NaN p999_us=NaN max_us=0.0 svc_p50_us=NaN svc_p99_us=NaN load_cores=0.989 cpu_busy=0.14/1.00 bytes=2500000000 mb_per_s=500.00",
	"grpc-sidemesh.1.closed": "label=grpc-sidemesh mode=closed conns=8 secs=5.000 requests=40000 errors=0 dropped=0 rps=8000.0 p50_us=15000.0 p90_us=24000.0 p99_us=37000.0 p999_us=50000.0 max_us=51000.0 svc_p50_us=15000.0 svc_p99_us=37000.0 cpu_s=4.60 cpu_us_per_req=115.0 sys_us_per_req=37.0 cpu_cores=0.920 rss_kb=39000 hwm_kb=40000 load_cores=0.600 cpu_busy=1.00/0.88",
	"grpc-sidemesh.1.open":   "label=grpc-sidemesh mode=open conns=8 secs=5.000 requests=10000 errors=0 dropped=0 rps=2000.0 p50_us=450.0 p90_us=730.0 p99_us=2200.0 p999_us=5800.0 max_us=7500.0 svc_p50_us=440.0 svc_p99_us=2100.0 target_rps=2000.0 skipped=0 cpu_s=2.00 cpu_us_per_req=200.0 sys_us_per_req=70.0 cpu_cores=0.400 rss_kb=35000 hwm_kb=40000 load_cores=0.500 cpu_busy=0.45/0.42",
	"grpc-sidemesh.1.stream": "label=grpc-sidemesh mode=stream conns=1 secs=5.000 requests=34000 errors=0 dropped=0 rps=6800.0 p50_us=NaN p90_us=NaN p99_us=NaN p999_us=NaN max_us=0.0 svc_p50_us=NaN svc_p99_us=NaN cpu_s=3.50 cpu_us_per_req=103.0 sys_us_per_req=50.0 cpu_cores=0.700 rss_kb=42000 hwm_kb=42000 load_cores=0.960 cpu_busy=0.73/0.99 bytes=2250000000 mb_per_s=450.00 cpu_us_per_mb=1555.6",
}

var specs = []string{
	"direct=direct (load generator → backend)",
	"sidemesh=sidemesh (`protocol: http`)",
	"nginx=nginx (1 worker)",
	"h2c-direct=direct (h2load → h2c backend)",
	"h2c-sidemesh=sidemesh h2c",
	"grpc-direct=direct (grpc-go)",
	"grpc-sidemesh=sidemesh <grpc> & co",
}

func writeRuns(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for name, line := range rawRuns {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(line+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestParseRun(t *testing.T) {
	r, err := parseRun("x", "label=a mode=open rps=12.5 p50_us=NaN cpu_busy=0.25/1.00 note=text")
	if err != nil {
		t.Fatal(err)
	}
	if r["label"] != "a" || r.num("rps") != 12.5 || !math.IsNaN(r.num("p50_us")) || r["note"] != "text" {
		t.Errorf("parsed %v", r)
	}
	if _, ok := r["p50_us"]; ok {
		t.Errorf("NaN kept as a value: %v", r)
	}
	if b, ok := r["cpu_busy"].([]float64); !ok || len(b) != 2 || b[0] != 0.25 {
		t.Errorf("cpu_busy = %#v, want [0.25 1]", r["cpu_busy"])
	}
	for _, bad := range []string{"rps", "=3", "cpu_busy=0.5/x"} {
		if _, err := parseRun("sidemesh.1.closed", bad); err == nil || !strings.Contains(err.Error(), "sidemesh.1.closed") {
			t.Errorf("%q: err = %v, want one naming the file", bad, err)
		}
	}
}

// runReport runs the whole program on the raw runs and returns the
// three outputs.
func runReport(t *testing.T) (js, svg, md []byte) {
	t.Helper()
	dir := writeRuns(t)
	out := t.TempDir()
	jp, sp, mp := filepath.Join(out, "r.json"), filepath.Join(out, "r.svg"), filepath.Join(out, "r.md")
	err := run(dir, "2026-01-02T03:04:05Z", 2, "Test CPU", "proxy on core 0", "0.50 0.60 0.70", "1.50 0.80 0.75",
		specs, []string{"nginx=nginx not installed"}, []string{"sidemesh=sidemesh dev", "h2load=1.52.0"},
		[]string{"rate=2000", "h2_conns=8", "h2_streams=16", "grpc_conns=8", "grpc_streams=16", "stream_streams=1", "stream_chunk=65536", "duration=5s"},
		jp, sp, mp)
	if err != nil {
		t.Fatal(err)
	}
	read := func(p string) []byte {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	return read(jp), read(sp), read(mp)
}

func TestJSON(t *testing.T) {
	js, _, _ := runReport(t)
	var r Report
	if err := json.Unmarshal(js, &r); err != nil {
		t.Fatalf("JSON does not parse: %v\n%s", err, js)
	}
	if r.Schema != SchemaVersion || r.Machine.CPUs != 2 || r.Pinning != "proxy on core 0" || r.Versions["h2load"] != "1.52.0" || r.Settings["rate"] != "2000" {
		t.Errorf("header: %+v", r)
	}
	if len(r.LoadAverage.Before) != 3 || r.LoadAverage.Before[0] != 0.5 || r.LoadAverage.After[2] != 0.75 {
		t.Errorf("load average %+v", r.LoadAverage)
	}
	by := map[string]Setup{}
	for _, s := range r.Setups {
		by[s.Name] = s
	}
	if len(r.Setups) != len(specs) || r.Setups[0].Name != "direct" || r.Setups[6].Name != "grpc-sidemesh" {
		t.Fatalf("setups %d, not in spec order: %+v", len(r.Setups), r.Setups)
	}
	if n := by["nginx"]; n.Skipped != "nginx not installed" || n.Best != nil {
		t.Errorf("nginx: %+v, want skipped with no results", n)
	}
	d, sm := by["direct"], by["sidemesh"]
	if !d.Baseline || sm.Baseline || len(sm.Rounds) != 2 || sm.Rounds[1].Runs["closed"].num("rps") != 19000 {
		t.Errorf("rounds of sidemesh: %+v", sm.Rounds)
	}
	if _, ok := sm.Rounds[1].Runs["open"]; ok {
		t.Errorf("the empty (failed) run of round 2 is in the JSON: %+v", sm.Rounds[1])
	}
	b := sm.Best
	// Best throughput of the rounds, the lowest CPU with its own split,
	// RSS of the saturated runs, errors summed.
	if b.RPS != 20000 || b.VsDirect != 20000.0/42000 || b.CPUSaturated.Total != 48 || b.CPUSaturated.User != 30 || b.CPUSaturated.Sys != 18 ||
		b.CPUAtRate.Total != 100 || b.RSSKB != 31000 || b.ProxyCoresSaturated != 1 || b.Errors != 1 || b.Rate != 2000 {
		t.Errorf("sidemesh best: %+v cpu %+v at rate %+v", b, b.CPUSaturated, b.CPUAtRate)
	}
	// Each percentile is the lowest of its rounds; added = minus direct's.
	if l := d.Best.LatencyAtRate; l.P50 != 100 || l.P99 != 280 || l.P999 != 900 || l.Max != 1400 {
		t.Errorf("direct at rate: %+v", l)
	}
	if a := b.AddedAtRate; a.P50 != 100 || a.P99 != 420 {
		t.Errorf("sidemesh added: %+v", a)
	}
	if d.Best.CPUSaturated != nil || d.Best.Errors != 2 {
		t.Errorf("direct: CPU %+v (want none: no proxy), errors %v (want the 2 dropped)", d.Best.CPUSaturated, d.Best.Errors)
	}
	h := by["h2c-sidemesh"].Best
	if h.RPS != 10000 || h.VsDirect != 0.1 || h.CPUSaturated.Total != 100 || h.LatencyAtRate != nil || h.LatencySaturated.P99 != 15000 {
		t.Errorf("h2c-sidemesh: %+v", h)
	}
	g := by["grpc-sidemesh"].Best
	if g.Stream == nil || g.Stream.MBPerS != 450 || g.Stream.VsDirect != 0.9 || g.Stream.CPUUsPerMB != 1555.6 || g.AddedAtRate.P99 != 1220 {
		t.Errorf("grpc-sidemesh: %+v stream %+v", g, g.Stream)
	}
	// Nulls, not NaN, where a value does not apply.
	var raw map[string]any
	if err := json.Unmarshal(js, &raw); err != nil {
		t.Fatal(err)
	}
	first := raw["setups"].([]any)[0].(map[string]any)["best"].(map[string]any)
	if v, ok := first["rss_kb"]; !ok || v != nil {
		t.Errorf("direct's rss_kb = %v, want null", v)
	}
}

// TestSVG checks the chart is well-formed XML with a bar per percentile
// and setup measured at the fixed rate, the setup names, the legend and
// the axis labels.
func TestSVG(t *testing.T) {
	_, svg, _ := runReport(t)
	dec := xml.NewDecoder(strings.NewReader(string(svg)))
	var texts []string
	bars := map[string]int{} // fill colour → bars
	var root string
	inText := false
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("SVG is not well-formed XML: %v\n%s", err, svg)
		}
		switch tk := tok.(type) {
		case xml.StartElement:
			if root == "" {
				root = tk.Name.Local
			}
			inText = tk.Name.Local == "text"
			if tk.Name.Local == "rect" {
				for _, a := range tk.Attr {
					switch a.Name.Local {
					case "fill":
						bars[a.Value]++
					case "height":
						if h, err := strconv.ParseFloat(strings.TrimSuffix(a.Value, "%"), 64); err != nil || h <= 0 {
							t.Errorf("rect of height %q: every bar must show", a.Value)
						}
					}
				}
			}
		case xml.CharData:
			if inText {
				texts = append(texts, string(tk))
			}
		case xml.EndElement:
			inText = false
		}
	}
	if root != "svg" {
		t.Fatalf("root element %q, want svg", root)
	}
	all := strings.Join(texts, "|")
	// direct, sidemesh, grpc-direct and grpc-sidemesh have latencies at
	// the rate; the h2c setups and the skipped nginx do not.
	for _, want := range []string{"|direct|", "|sidemesh|", "|grpc-direct|", "|grpc-sidemesh|", "p50", "p99.9", "max", "latency (log scale)", "setup", "2000 requests/s", "100 µs", "10 ms"} {
		if !strings.Contains("|"+all+"|", want) {
			t.Errorf("chart texts lack %q: %s", want, all)
		}
	}
	for _, absent := range []string{"h2c-sidemesh", "nginx"} {
		if strings.Contains(all, absent) {
			t.Errorf("chart has %q, which has no latency at the fixed rate", absent)
		}
	}
	for _, p := range percentiles {
		if bars[p.colour] != 4+1 { // 4 bars and the legend's swatch
			t.Errorf("%s: %d rects of its colour, want 4 bars + 1 legend swatch", p.name, bars[p.colour])
		}
	}
	// The bar tooltips carry the numbers.
	for _, want := range []string{"grpc-sidemesh p99: 2.2 ms", "sidemesh p50: 200 µs", "direct max: 1.4 ms"} {
		if !strings.Contains(string(svg), want) {
			t.Errorf("SVG lacks %q", want)
		}
	}
}

func TestSVGNothingToDraw(t *testing.T) {
	var b strings.Builder
	if err := writeSVG(&b, []Setup{{Name: "h2c-direct"}}); err != nil {
		t.Fatal(err)
	}
	if err := xml.Unmarshal([]byte(b.String()), new(struct{})); err != nil {
		t.Fatalf("empty chart is not XML: %v", err)
	}
	if !strings.Contains(b.String(), "no setup measured at a fixed rate") {
		t.Errorf("empty chart does not say why: %s", b.String())
	}
}

func TestMarkdown(t *testing.T) {
	_, _, md := runReport(t)
	s := string(md)
	for _, want := range []string{
		"### HTTP/2 without TLS (h2c)", "h2load, 8 connections × 16 concurrent streams",
		"| sidemesh h2c | 10000 | 0.10 | 100.0 µs (70 + 30) | 1.00 | 6.000 ms / 15.000 ms | 39.1 MB | 0 |",
		"### gRPC (grpc-go client and server)",
		"| direct (grpc-go) | 30000 | 1.00 | – | – | 0.220 ms | 0.980 ms | 3.100 ms | 500.0 | 1.00 | – | – | 0 |",
		"| sidemesh <grpc> & co | 8000 | 0.27 | 115.0 µs (78 + 37) | 200.0 µs (130 + 70) | 0.450 ms (+0.230) | 2.200 ms (+1.220) | 5.800 ms | 450.0 | 0.90 | 1556 µs | 38.1 MB | 0 |",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("markdown lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "direct (load generator") {
		t.Errorf("markdown has the HTTP/1.1 rows, which are run.sh's own table:\n%s", s)
	}
}

func TestFlagErrors(t *testing.T) {
	dir := writeRuns(t)
	for _, c := range []struct {
		setups, skips, versions []string
		load                    string
		want                    string
	}{
		{setups: []string{"nolabel"}, want: `-setup "nolabel"`},
		{skips: []string{"=x"}, want: `-skip "=x"`},
		{versions: []string{"v"}, want: `-version "v"`},
		{load: "0.5 high", want: `"high" is not a number`},
	} {
		err := run(dir, "", 0, "", "", c.load, "", c.setups, c.skips, c.versions, nil, "", "", "")
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("err = %v, want one naming %s", err, c.want)
		}
	}
	if err := run("", "", 0, "", "", "", "", nil, nil, nil, nil, "", "", ""); err == nil || !strings.Contains(err.Error(), "-runs") {
		t.Errorf("no -runs: err = %v", err)
	}
}
