package measure

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ProcSample is the CPU time and memory of a set of processes at one moment.
type ProcSample struct {
	CPUTicks uint64 // user + system, in clock ticks
	SysTicks uint64
	RSSKB    uint64
	HWMKB    uint64
}

// SampleProcs sums utime+stime (/proc/PID/stat) and VmRSS/VmHWM
// (/proc/PID/status) over pids.
func SampleProcs(pids []int) (ProcSample, error) {
	var s ProcSample
	for _, pid := range pids {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return s, err
		}
		ut, st, err := parseStat(b)
		if err != nil {
			return s, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		s.CPUTicks += ut + st
		s.SysTicks += st
		st2, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
		if err != nil {
			return s, err
		}
		rss, hwm := parseStatus(st2)
		s.RSSKB += rss
		s.HWMKB += hwm
	}
	return s, nil
}

// parseStat returns utime and stime (fields 14 and 15) of a /proc/PID/stat
// line. The fields after the last ')' start at field 3 (state), so the
// command name may hold spaces and parentheses.
func parseStat(b []byte) (utime, stime uint64, err error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("no ')' after the command name")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("%d fields after the command name, want at least 13", len(f))
	}
	if utime, err = strconv.ParseUint(f[11], 10, 64); err != nil {
		return 0, 0, fmt.Errorf("utime: %w", err)
	}
	if stime, err = strconv.ParseUint(f[12], 10, 64); err != nil {
		return 0, 0, fmt.Errorf("stime: %w", err)
	}
	return utime, stime, nil
}

// parseStatus returns VmRSS and VmHWM in kB from /proc/PID/status.
func parseStatus(b []byte) (rssKB, hwmKB uint64) {
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			rssKB = n
		case "VmHWM":
			hwmKB = n
		}
	}
	return rssKB, hwmKB
}

// CPUTimes returns busy and total ticks per CPU from /proc/stat.
func CPUTimes() (busy, total []uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return nil, nil
	}
	return parseCPUTimes(b)
}

func parseCPUTimes(b []byte) (busy, total []uint64) {
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || !strings.HasPrefix(f[0], "cpu") || f[0] == "cpu" {
			continue
		}
		var t, idle uint64
		for i, v := range f[1:] {
			n, _ := strconv.ParseUint(v, 10, 64)
			if i >= 8 { // guest time is already counted in user
				break
			}
			t += n
			if i == 3 || i == 4 { // idle, iowait
				idle += n
			}
		}
		busy = append(busy, t-idle)
		total = append(total, t)
	}
	return busy, total
}

// ParsePids parses a comma- or space-separated PID list; flagName names
// the flag in the error.
func ParsePids(flagName, s string) ([]int, error) {
	var out []int
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' }) {
		p, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("%s: %q is not a PID", flagName, f)
		}
		out = append(out, p)
	}
	return out, nil
}
