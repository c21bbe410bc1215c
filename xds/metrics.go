package xds

import (
	"fmt"
	"io"
	"maps"
	"runtime/metrics"
	"slices"
	"sort"
	"strings"
)

// typeLabel is the short name of a type URL: "Cluster",
// "ClusterLoadAssignment".
func typeLabel(typeURL string) string { return typeURL[strings.LastIndexByte(typeURL, '.')+1:] }

// WriteClientMetrics writes the client's counters in the Prometheus text
// format (sidemesh_xds_client_*; per type: updates, ACKs, NACKs).
func WriteClientMetrics(w io.Writer, st ClientStats) error {
	types := make([]string, 0, len(st.Types))
	for t := range st.Types {
		types = append(types, t)
	}
	sort.Strings(types)
	var b strings.Builder
	connected := 0
	if st.Connected {
		connected = 1
	}
	fmt.Fprintf(&b, "# HELP sidemesh_xds_client_connected Whether the ADS stream is up.\n# TYPE sidemesh_xds_client_connected gauge\nsidemesh_xds_client_connected %d\n", connected)
	fmt.Fprintf(&b, "# HELP sidemesh_xds_client_streams_total ADS streams opened.\n# TYPE sidemesh_xds_client_streams_total counter\nsidemesh_xds_client_streams_total %d\n", st.Streams)
	for _, m := range []struct {
		name, help string
		get        func(*TypeStats) uint64
	}{
		{"updates", "xDS responses received.", func(t *TypeStats) uint64 { return t.Updates }},
		{"acks", "xDS responses accepted.", func(t *TypeStats) uint64 { return t.ACKs }},
		{"nacks", "xDS responses rejected.", func(t *TypeStats) uint64 { return t.NACKs }},
	} {
		fmt.Fprintf(&b, "# HELP sidemesh_xds_client_%s_total %s\n# TYPE sidemesh_xds_client_%s_total counter\n", m.name, m.help, m.name)
		for _, t := range types {
			fmt.Fprintf(&b, "sidemesh_xds_client_%s_total{type=%q} %d\n", m.name, typeLabel(t), m.get(st.Types[t]))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteServerMetrics writes the server's counters in the Prometheus text
// format (sidemesh_xds_server_*).
func WriteServerMetrics(w io.Writer, st ServerStats) error {
	var b strings.Builder
	for _, m := range []struct {
		name, kind, help string
		v                any
	}{
		{"sidemesh_xds_server_pushes_total", "counter", "Snapshots set (each one a push to the clients whose resources changed).", st.Pushes},
		{"sidemesh_xds_server_streams", "gauge", "Open xDS streams (connected clients).", st.Streams},
		{"sidemesh_xds_server_requests_total", "counter", "xDS requests received.", st.Requests},
		{"sidemesh_xds_server_acks_total", "counter", "ACKs received.", st.ACKs},
		{"sidemesh_xds_server_nacks_total", "counter", "NACKs received.", st.NACKs},
	} {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n%s %v\n", m.name, m.help, m.name, m.kind, m.name, m.v)
	}
	for _, m := range []struct {
		name, help string
		by         map[string]uint64
	}{
		{"sidemesh_xds_server_responses_total", "xDS responses sent, by type.", st.Responses},
		{"sidemesh_xds_server_acks_by_type_total", "ACKs received, by type.", st.ACKsByType},
		{"sidemesh_xds_server_nacks_by_type_total", "NACKs received, by type.", st.NACKsByType},
	} {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s counter\n", m.name, m.help, m.name)
		for _, t := range slices.Sorted(maps.Keys(m.by)) {
			fmt.Fprintf(&b, "%s{type=%q} %d\n", m.name, typeLabel(t), m.by[t])
		}
	}
	h := st.PushLatency
	const hn = "sidemesh_xds_server_push_latency_seconds"
	fmt.Fprintf(&b, "# HELP %s Time from a snapshot set to each response carrying it.\n# TYPE %s histogram\n", hn, hn)
	for i, le := range h.Buckets {
		fmt.Fprintf(&b, "%s_bucket{le=\"%g\"} %d\n", hn, le, h.Counts[i])
	}
	fmt.Fprintf(&b, "%s_bucket{le=\"+Inf\"} %d\n%s_sum %g\n%s_count %d\n", hn, h.Count, hn, h.Sum, hn, h.Count)
	writeRuntimeMetrics(&b)
	_, err := io.WriteString(w, b.String())
	return err
}

// runtimeMetrics are the Go runtime's figures a control plane's memory
// per client is judged by, under the Prometheus Go collector's names.
var runtimeMetrics = []struct{ name, kind, help, sample string }{
	{"go_goroutines", "gauge", "Goroutines that currently exist.", "/sched/goroutines:goroutines"},
	{"go_gc_heap_live_bytes", "gauge", "Heap memory occupied by live objects, as of the last GC.", "/gc/heap/live:bytes"},
	{"go_gc_cycles_total", "counter", "Completed GC cycles.", "/gc/cycles/total:gc-cycles"},
	{"go_memstats_stack_inuse_bytes", "gauge", "Memory used by goroutine stacks.", "/memory/classes/heap/stacks:bytes"},
	{"go_memstats_heap_inuse_bytes", "gauge", "Heap memory in spans with at least one object (live or not yet collected).", "/memory/classes/heap/objects:bytes"},
}

func writeRuntimeMetrics(b *strings.Builder) {
	samples := make([]metrics.Sample, len(runtimeMetrics))
	for i, m := range runtimeMetrics {
		samples[i].Name = m.sample
	}
	metrics.Read(samples)
	for i, m := range runtimeMetrics {
		if samples[i].Value.Kind() != metrics.KindUint64 {
			continue // not supported by this runtime
		}
		fmt.Fprintf(b, "# HELP %s %s\n# TYPE %s %s\n%s %d\n", m.name, m.help, m.name, m.kind, m.name, samples[i].Value.Uint64())
	}
}
