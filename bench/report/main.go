package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// multi is a repeatable flag.
type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	var setups, skips, versions, settings multi
	var (
		runsDir    = flag.String("runs", "", "directory of raw runs (SETUP.ROUND.KIND files)")
		started    = flag.String("started", "", "when the run started (RFC 3339, UTC)")
		cpus       = flag.Int("cpus", 0, "CPUs of the machine")
		model      = flag.String("cpu-model", "", "CPU model of the machine")
		pinning    = flag.String("pinning", "", "how the processes were pinned")
		loadBefore = flag.String("load-before", "", "/proc/loadavg's first three fields before the run")
		loadAfter  = flag.String("load-after", "", "/proc/loadavg's first three fields after the run")
		jsonOut    = flag.String("json", "", "write the JSON report here")
		svgOut     = flag.String("svg", "", "write the latency chart here")
		mdOut      = flag.String("md", "", "write the h2c and gRPC markdown tables here")
	)
	flag.Var(&setups, "setup", "NAME=LABEL of a setup, in table order (repeatable)")
	flag.Var(&skips, "skip", "NAME=REASON of a skipped setup (repeatable)")
	flag.Var(&versions, "version", "NAME=VERSION of a tool (repeatable)")
	flag.Var(&settings, "setting", "NAME=VALUE of a knob of the run (repeatable)")
	flag.Parse()
	if err := run(*runsDir, *started, *cpus, *model, *pinning, *loadBefore, *loadAfter, setups, skips, versions, settings, *jsonOut, *svgOut, *mdOut); err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
}

func run(runsDir, started string, cpus int, model, pinning, loadBefore, loadAfter string, setups, skips, versions, settings []string, jsonOut, svgOut, mdOut string) error {
	if runsDir == "" {
		return errors.New("-runs is required")
	}
	runs, err := readRuns(runsDir)
	if err != nil {
		return err
	}
	skip, err := pairs("-skip", skips)
	if err != nil {
		return err
	}
	var specs []SetupSpec
	for _, s := range setups {
		name, label, ok := strings.Cut(s, "=")
		if !ok || name == "" {
			return fmt.Errorf("-setup %q: want NAME=LABEL", s)
		}
		specs = append(specs, SetupSpec{Name: name, Label: label, Skipped: skip[name]})
	}
	r := &Report{Schema: SchemaVersion, Started: started, Machine: Machine{CPUs: cpus, Model: model}, Pinning: pinning}
	if r.LoadAverage.Before, err = loadavg("-load-before", loadBefore); err != nil {
		return err
	}
	if r.LoadAverage.After, err = loadavg("-load-after", loadAfter); err != nil {
		return err
	}
	if r.Versions, err = pairs("-version", versions); err != nil {
		return err
	}
	if r.Settings, err = pairs("-setting", settings); err != nil {
		return err
	}
	r.Setups = build(specs, runs)
	write := func(path string, f func(*bytes.Buffer) error) error {
		if path == "" {
			return nil
		}
		var b bytes.Buffer
		if err := f(&b); err != nil {
			return err
		}
		return os.WriteFile(path, b.Bytes(), 0o644)
	}
	if err := write(jsonOut, func(b *bytes.Buffer) error {
		enc := json.NewEncoder(b)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		return enc.Encode(r)
	}); err != nil {
		return err
	}
	if err := write(svgOut, func(b *bytes.Buffer) error { return writeSVG(b, r.Setups) }); err != nil {
		return err
	}
	return write(mdOut, func(b *bytes.Buffer) error { return writeMarkdown(b, r) })
}

// pairs parses NAME=VALUE flags; flagName names the flag in errors.
func pairs(flagName string, list []string) (map[string]string, error) {
	out := map[string]string{}
	for _, s := range list {
		k, v, ok := strings.Cut(s, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%s %q: want NAME=VALUE", flagName, s)
		}
		out[k] = v
	}
	return out, nil
}

// loadavg parses "0.52 0.71 0.80".
func loadavg(flagName, s string) ([]Num, error) {
	out := []Num{}
	for _, f := range strings.Fields(s) {
		v, err := strconv.ParseFloat(f, 64)
		if err != nil {
			return nil, fmt.Errorf("%s %q: %q is not a number", flagName, s, f)
		}
		out = append(out, Num(v))
	}
	return out, nil
}
