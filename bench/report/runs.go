package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Run is one raw run: the key=value pairs of one loadgen or grpcbench line.
// Values that parse as numbers are numbers; cpu_busy ("0.53/1.00") is the
// list of per-CPU busy fractions; anything else stays a string.
type Run map[string]any

// num returns a numeric value, NaN if it is missing or not a number.
func (r Run) num(key string) float64 {
	if v, ok := r[key].(float64); ok {
		return v
	}
	return math.NaN()
}

// parseRun reads one key=value line. name names the input in errors.
func parseRun(name, line string) (Run, error) {
	r := Run{}
	for _, f := range strings.Fields(line) {
		k, v, ok := strings.Cut(f, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%s: %q is not key=value", name, f)
		}
		switch {
		case k == "cpu_busy":
			var busy []float64
			for _, s := range strings.Split(v, "/") {
				if s == "" {
					continue
				}
				b, err := strconv.ParseFloat(s, 64)
				if err != nil {
					return nil, fmt.Errorf("%s: cpu_busy=%q: %v", name, v, err)
				}
				busy = append(busy, b)
			}
			r[k] = busy
		case k == "label" || k == "mode":
			r[k] = v
		default:
			if n, err := strconv.ParseFloat(v, 64); err == nil && v != "NaN" {
				r[k] = n
			} else if v == "NaN" {
				// No samples (e.g. latency of a streaming run): absent.
			} else {
				r[k] = v
			}
		}
	}
	return r, nil
}

// rounds holds one setup's runs: kind → runs in round order.
type rounds map[string][]roundRun

type roundRun struct {
	round int
	run   Run
}

// readRuns reads every SETUP.ROUND.KIND file in dir.
func readRuns(dir string) (map[string]rounds, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := map[string]rounds{}
	for _, e := range ents {
		parts := strings.Split(e.Name(), ".")
		if e.IsDir() || len(parts) != 3 {
			continue
		}
		setup, kind := parts[0], parts[2]
		round, err := strconv.Atoi(parts[1])
		if err != nil {
			continue // not a run file (e.g. SETUP.err)
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		line := strings.TrimSpace(string(b))
		if line == "" {
			continue // the run failed; its error went to SETUP.err
		}
		run, err := parseRun(e.Name(), line)
		if err != nil {
			return nil, err
		}
		if out[setup] == nil {
			out[setup] = rounds{}
		}
		out[setup][kind] = append(out[setup][kind], roundRun{round, run})
	}
	for _, rs := range out {
		for _, runs := range rs {
			sort.Slice(runs, func(i, j int) bool { return runs[i].round < runs[j].round })
		}
	}
	return out, nil
}

// best returns the best value of key over the runs: the highest when
// higher is better, else the lowest. NaN when no run has it.
func best(runs []roundRun, key string, higherIsBetter bool) float64 {
	v := math.NaN()
	for _, r := range runs {
		x := r.run.num(key)
		if math.IsNaN(x) {
			continue
		}
		if math.IsNaN(v) || (higherIsBetter && x > v) || (!higherIsBetter && x < v) {
			v = x
		}
	}
	return v
}

// bestRun returns the run with the lowest (or highest) value of key.
func bestRun(runs []roundRun, key string, higherIsBetter bool) Run {
	var out Run
	v := math.NaN()
	for _, r := range runs {
		x := r.run.num(key)
		if math.IsNaN(x) {
			continue
		}
		if math.IsNaN(v) || (higherIsBetter && x > v) || (!higherIsBetter && x < v) {
			v, out = x, r.run
		}
	}
	return out
}

// sum adds key over the runs.
func sum(runs []roundRun, key string) float64 {
	t := 0.0
	for _, r := range runs {
		if x := r.run.num(key); !math.IsNaN(x) {
			t += x
		}
	}
	return t
}
