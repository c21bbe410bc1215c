package measure

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
)

// Result is one measured window of one load generator run.
type Result struct {
	Label, Mode string
	Conns       int
	Rate        float64 // open loop: the target rate
	Elapsed     time.Duration
	Requests    uint64
	Errors      uint64
	Dropped     uint64 // open loop: requests that found the queue full
	Skipped     uint64 // open loop: slots the scheduler reached too late
	Bytes       uint64 // payload bytes received (streaming runs)
	Lat, Svc    Hist
	SchedLag    *Hist // open loop: release time minus scheduled time
	Procs       bool  // the proxy's CPU and RSS were read
	CPU         float64
	CPUSys      float64 // seconds
	RSSKB       uint64
	HWMKB       uint64
	LoadCores   float64   // CPU of the load side (backend + generator), in cores
	CPUBusy     []float64 // per CPU, busy fraction of the window (everything running on it)
	LastErr     string
}

// Print writes the result as one line of key=value pairs. bench/run.sh and
// bench/report read these keys; new keys go at the end of the line.
func (r *Result) Print(w io.Writer) {
	secs := r.Elapsed.Seconds()
	rps := float64(r.Requests) / secs
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }
	fmt.Fprintf(w, "label=%s mode=%s conns=%d secs=%.3f requests=%d errors=%d dropped=%d rps=%s p50_us=%s p90_us=%s p99_us=%s p999_us=%s max_us=%s svc_p50_us=%s svc_p99_us=%s",
		r.Label, r.Mode, r.Conns, secs, r.Requests, r.Errors, r.Dropped, f(rps),
		f(r.Lat.Quantile(0.50)), f(r.Lat.Quantile(0.90)), f(r.Lat.Quantile(0.99)), f(r.Lat.Quantile(0.999)),
		f(r.Lat.MaxUs()), f(r.Svc.Quantile(0.50)), f(r.Svc.Quantile(0.99)))
	if r.Rate > 0 {
		fmt.Fprintf(w, " target_rps=%s skipped=%d", f(r.Rate), r.Skipped)
		if r.SchedLag != nil {
			fmt.Fprintf(w, " sched_lag_p50_us=%s sched_lag_p99_us=%s", f(r.SchedLag.Quantile(0.5)), f(r.SchedLag.Quantile(0.99)))
		}
	}
	if r.Procs {
		per, sys := math.NaN(), math.NaN()
		if r.Requests > 0 {
			per = r.CPU / float64(r.Requests) * 1e6
			sys = r.CPUSys / float64(r.Requests) * 1e6
		}
		fmt.Fprintf(w, " cpu_s=%.2f cpu_us_per_req=%s sys_us_per_req=%s cpu_cores=%.3f rss_kb=%d hwm_kb=%d",
			r.CPU, f(per), f(sys), r.CPU/secs, r.RSSKB, r.HWMKB)
	}
	busy := make([]string, len(r.CPUBusy))
	for i, b := range r.CPUBusy {
		busy[i] = strconv.FormatFloat(b, 'f', 2, 64)
	}
	fmt.Fprintf(w, " load_cores=%.3f cpu_busy=%s", r.LoadCores, strings.Join(busy, "/"))
	if r.Bytes > 0 {
		mb := float64(r.Bytes) / 1e6
		fmt.Fprintf(w, " bytes=%d mb_per_s=%s", r.Bytes, strconv.FormatFloat(mb/secs, 'f', 2, 64))
		if r.Procs {
			fmt.Fprintf(w, " cpu_us_per_mb=%s", f(r.CPU/mb*1e6))
		}
	}
	fmt.Fprintln(w)
}
