package main

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
)

// percentiles are the chart's bars, in order, with their colours.
var percentiles = []struct {
	name   string
	colour string
	value  func(*Latency) Num
}{
	{"p50", "#4e79a7", func(l *Latency) Num { return l.P50 }},
	{"p90", "#59a14f", func(l *Latency) Num { return l.P90 }},
	{"p99", "#f28e2b", func(l *Latency) Num { return l.P99 }},
	{"p99.9", "#e15759", func(l *Latency) Num { return l.P999 }},
	{"max", "#76448a", func(l *Latency) Num { return l.Max }},
}

// Chart geometry, in SVG user units (pixels).
const (
	barW        = 13.0
	groupGap    = 22.0
	marginLeft  = 78.0
	marginRight = 24.0
	marginTop   = 64.0
	plotH       = 260.0
	labelsH     = 120.0 // room for the rotated setup names under the plot
	minPlotW    = 560.0 // room for the title and the legend
)

// writeSVG draws one group of bars per setup that has latencies at the
// fixed rate: p50, p90, p99, p99.9 and max on a log scale. It writes a
// chart saying there is nothing to draw when no setup has them.
func writeSVG(w io.Writer, setups []Setup) error {
	var rows []Setup
	var rates []string
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, s := range setups {
		if s.Best == nil || s.Best.LatencyAtRate == nil {
			continue
		}
		rows = append(rows, s)
		if r := float64(s.Best.Rate); !math.IsNaN(r) {
			if rs := strconv.FormatFloat(r, 'f', -1, 64); !slices.Contains(rates, rs) {
				rates = append(rates, rs)
			}
		}
		for _, p := range percentiles {
			v := float64(p.value(s.Best.LatencyAtRate))
			if v > 0 && !math.IsNaN(v) {
				lo, hi = math.Min(lo, v), math.Max(hi, v)
			}
		}
	}
	if math.IsInf(lo, 1) {
		lo, hi = 10, 1000
	}
	decLo, decHi := math.Floor(math.Log10(lo)), math.Ceil(math.Log10(hi))
	if math.Pow(10, decLo) >= lo {
		decLo-- // the lowest value on the axis' floor would draw no bar
	}
	if decHi <= decLo {
		decHi = decLo + 1
	}
	groupW := float64(len(percentiles))*barW + groupGap
	width := marginLeft + math.Max(float64(len(rows))*groupW, minPlotW) + marginRight
	height := marginTop + plotH + labelsH
	y := func(v float64) float64 { // latency (µs) → SVG y
		if v <= 0 || math.IsNaN(v) {
			v = math.Pow(10, decLo)
		}
		f := (math.Log10(v) - decLo) / (decHi - decLo)
		return marginTop + plotH*(1-f)
	}

	var b bytes.Buffer
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p(`<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	p(`<rect width="100%%" height="100%%" fill="#ffffff"/>` + "\n")
	title := "Latency percentiles at the fixed rate, per setup"
	if len(rates) > 0 {
		title += " (" + strings.Join(rates, ", ") + " requests/s)"
	}
	p(`<text x="10" y="20" font-size="14" font-weight="bold">%s</text>`+"\n", esc(title))
	// Legend.
	for i, pc := range percentiles {
		x := marginLeft + float64(i)*70
		p(`<rect x="%.0f" y="32" width="12" height="12" fill="%s"/>`, x, pc.colour)
		p(`<text x="%.0f" y="43">%s</text>`+"\n", x+16, esc(pc.name))
	}
	// Y axis: a grid line and a label per decade, the axis title rotated.
	for d := decLo; d <= decHi; d++ {
		yy := y(math.Pow(10, d))
		p(`<line x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f" stroke="#cccccc"/>`, marginLeft, yy, width-marginRight, yy)
		p(`<text x="%.0f" y="%.1f" text-anchor="end">%s</text>`+"\n", marginLeft-6, yy+4, esc(fmtMicros(math.Pow(10, d))))
	}
	p(`<text transform="translate(16 %.0f) rotate(-90)" text-anchor="middle">%s</text>`+"\n", marginTop+plotH/2, esc("latency (log scale)"))
	p(`<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="#000000"/>`+"\n", marginLeft, marginTop, marginLeft, marginTop+plotH)
	p(`<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="#000000"/>`+"\n", marginLeft, marginTop+plotH, width-marginRight, marginTop+plotH)
	// Bars, one group per setup, and the setup's name under its group.
	for i, s := range rows {
		x0 := marginLeft + groupGap/2 + float64(i)*groupW
		for j, pc := range percentiles {
			v := float64(pc.value(s.Best.LatencyAtRate))
			if math.IsNaN(v) {
				continue
			}
			top := y(v)
			p(`<rect x="%.1f" y="%.1f" width="%.0f" height="%.1f" fill="%s"><title>%s %s: %s</title></rect>`+"\n",
				x0+float64(j)*barW, top, barW-1, marginTop+plotH-top, pc.colour, esc(s.Name), esc(pc.name), esc(fmtMicros(v)))
		}
		cx := x0 + float64(len(percentiles))*barW/2
		p(`<text transform="translate(%.1f %.0f) rotate(-40)" text-anchor="end">%s</text>`+"\n", cx, marginTop+plotH+14, esc(s.Name))
	}
	if len(rows) == 0 {
		p(`<text x="%.0f" y="%.0f">%s</text>`+"\n", marginLeft+10, marginTop+plotH/2, esc("no setup measured at a fixed rate"))
	}
	p(`<text x="%.0f" y="%.0f" text-anchor="middle">%s</text>`+"\n", marginLeft+(width-marginLeft-marginRight)/2, height-6, esc("setup"))
	p("</svg>\n")
	_, err := w.Write(b.Bytes())
	return err
}

// fmtMicros writes a latency in µs with a readable unit.
func fmtMicros(us float64) string {
	switch {
	case us >= 1e6:
		return strconv.FormatFloat(us/1e6, 'g', 4, 64) + " s"
	case us >= 1e3:
		return strconv.FormatFloat(us/1e3, 'g', 4, 64) + " ms"
	}
	return strconv.FormatFloat(us, 'g', 4, 64) + " µs"
}

func esc(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}
