package sidecar

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/mtls/mtlstest"
)

// cpuTime is the process's user+system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkTwoSidecars is client → web's outbound → api's inbound → app,
// all in this process, keep-alive everywhere: plaintext between the
// sidecars, then mTLS. cpu-µs/op is the whole process's CPU per request
// (client, both sidecars and the app), the number to compare.
func BenchmarkTwoSidecars(b *testing.B) {
	for _, mode := range []string{"plaintext", "mtls"} {
		b.Run(mode, func(b *testing.B) {
			ca := mtlstest.NewCA(b, testTD)
			app := benchBackend(b)
			m := "strict"
			if mode == "plaintext" {
				m = "off"
			}
			api := startMeshSidecar(b, ca, "api", m, fmt.Sprintf("service: {name: api, port: %d, inbound: 127.0.0.1:0}\n", backendPort(app)), Options{})
			src := newStatic(b, "api", discovery.Endpoint{Address: api.InboundAddr(), Weight: 1, MTLS: mode == "mtls"})
			web := startMeshSidecar(b, ca, "web", m, "upstreams:\n  - {service: api, listen: 127.0.0.1:0}\n", Options{Source: src})
			start := cpuTime(b)
			runLoad(b, "http://"+web.UpstreamAddr("api")+"/")
			b.StopTimer()
			b.ReportMetric(float64((cpuTime(b)-start).Microseconds())/float64(b.N), "cpu-µs/op")
		})
	}
}
