package main

import (
	"fmt"
	"io"
	"math"
	"strings"
)

// writeMarkdown writes the tables of the h2c and gRPC groups (the HTTP/1.1
// table is bench/run.sh's own). A group with no setup writes nothing.
func writeMarkdown(w io.Writer, r *Report) error {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	set := func(k string) string {
		if v := r.Settings[k]; v != "" {
			return v
		}
		return "?"
	}
	rows := func(group string) []Setup {
		var out []Setup
		for _, s := range r.Setups {
			if s.Group == group {
				out = append(out, s)
			}
		}
		return out
	}
	if h2 := rows("h2c"); len(h2) > 0 {
		p("### HTTP/2 without TLS (h2c)\n\n")
		p("h2load, %s connections × %s concurrent streams, closed loop, %s per run; 100-byte responses from the frame-level h2c backend (`bench/backend -h2c`).\n",
			set("h2_conns"), set("h2_streams"), set("duration"))
		p("Latency here is under saturation (from each request's send), not at a fixed rate.\n\n")
		p("| setup | req/s | vs direct | proxy CPU per request (user + sys µs) | proxy cores busy | p50 / p99 under load | proxy RSS | errors |\n")
		p("|---|---|---|---|---|---|---|---|\n")
		for _, s := range h2 {
			if s.Skipped != "" || s.Best == nil {
				p("| %s | skipped: %s |||||||\n", s.Label, orDefault(s.Skipped, "no results"))
				continue
			}
			bs := s.Best
			p("| %s | %s | %s | %s | %s | %s | %s | %s |\n", s.Label, fmtF(bs.RPS, 0), fmtF(bs.VsDirect, 2), fmtCPU(bs.CPUSaturated),
				fmtF(bs.ProxyCoresSaturated, 2), fmtP50P99(bs.LatencySaturated), fmtRSS(bs.RSSKB), fmtF(bs.Errors, 0))
		}
		p("\n")
	}
	if g := rows("grpc"); len(g) > 0 {
		rate := set("rate")
		p("### gRPC (grpc-go client and server)\n\n")
		p("Unary: %s connections × %s calls in flight, 100-byte answers; closed loop for throughput, open loop at %s calls/s for latency\n",
			set("grpc_conns"), set("grpc_streams"), rate)
		p("(from each call's release; *added* = proxied minus direct). Streaming: %s server-streaming call(s) of %s-byte messages.\n\n",
			set("stream_streams"), set("stream_chunk"))
		p("| setup | unary calls/s | vs direct | proxy CPU per call, saturated (user + sys µs) | proxy CPU per call at %s/s | p50 at %s/s (added) | p99 at %s/s (added) | p99.9 at %s/s | streaming MB/s | vs direct | proxy CPU per MB | proxy RSS | errors |\n", rate, rate, rate, rate)
		p("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, s := range g {
			if s.Skipped != "" || s.Best == nil {
				p("| %s | skipped: %s ||||||||||||\n", s.Label, orDefault(s.Skipped, "no results"))
				continue
			}
			bs := s.Best
			var p50, p99, p999 string = "–", "–", "–"
			if l := bs.LatencyAtRate; l != nil {
				p50, p99, p999 = fmtMs(l.P50), fmtMs(l.P99), fmtMs(l.P999)
				if a := bs.AddedAtRate; a != nil && !s.Baseline {
					p50 += fmt.Sprintf(" (%+.3f)", float64(a.P50)/1e3)
					p99 += fmt.Sprintf(" (%+.3f)", float64(a.P99)/1e3)
				}
			}
			mbps, mbvs, cpumb := "–", "–", "–"
			if st := bs.Stream; st != nil {
				mbps, mbvs, cpumb = fmtF(st.MBPerS, 1), fmtF(st.VsDirect, 2), fmtF(st.CPUUsPerMB, 0)
				if cpumb != "–" {
					cpumb += " µs"
				}
			}
			p("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", s.Label, fmtF(bs.RPS, 0), fmtF(bs.VsDirect, 2),
				fmtCPU(bs.CPUSaturated), fmtCPU(bs.CPUAtRate), p50, p99, p999, mbps, mbvs, cpumb, fmtRSS(bs.RSSKB), fmtF(bs.Errors, 0))
		}
		p("\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// fmtF formats a number with prec decimals, "–" for NaN.
func fmtF(n Num, prec int) string {
	if math.IsNaN(float64(n)) {
		return "–"
	}
	return fmt.Sprintf("%.*f", prec, float64(n))
}

func fmtCPU(c *CPU) string {
	if c == nil || math.IsNaN(float64(c.Total)) {
		return "–"
	}
	return fmt.Sprintf("%.1f µs (%.0f + %.0f)", float64(c.Total), float64(c.User), float64(c.Sys))
}

func fmtMs(us Num) string {
	if math.IsNaN(float64(us)) {
		return "–"
	}
	return fmt.Sprintf("%.3f ms", float64(us)/1e3)
}

func fmtP50P99(l *Latency) string {
	if l == nil {
		return "–"
	}
	return fmtMs(l.P50) + " / " + fmtMs(l.P99)
}

func fmtRSS(kb Num) string {
	if math.IsNaN(float64(kb)) {
		return "–"
	}
	return fmt.Sprintf("%.1f MB", float64(kb)/1024)
}
