package mtls

import (
	"crypto/tls"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

func cpuNow(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkHandshake is the cost of one new mesh connection, both sides in
// this process: a full mTLS handshake (ECDSA P-256 leaves, X25519), and
// one resumed from a session ticket. cpu-µs/op is both sides' CPU.
func BenchmarkHandshake(b *testing.B) {
	ca := newCA(b, td)
	for _, resume := range []bool{false, true} {
		name := "full"
		if resume {
			name = "resumed"
		}
		b.Run(name, func(b *testing.B) {
			api, web := storeFor(b, ca, td, "api"), storeFor(b, ca, td, "web")
			ln := NewListener(listen(b), ModeStrict, api.ServerConfig(ServerALPN), nil)
			defer ln.Close()
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					go func() {
						defer c.Close()
						_, _ = io.Copy(c, c) // handshake, then echo
					}()
				}
			}()
			var cache tls.ClientSessionCache
			if resume {
				cache = tls.NewLRUClientSessionCache(1)
			}
			cfg := web.ClientConfig("api", []string{"http/1.1"}, cache)
			one := func() bool {
				raw, err := net.Dial("tcp", ln.Addr().String())
				if err != nil {
					b.Fatal(err)
				}
				c := tls.Client(raw, cfg)
				defer c.Close()
				if _, err := c.Write([]byte{1}); err != nil {
					b.Fatal(err)
				}
				buf := make([]byte, 1)
				if _, err := io.ReadFull(c, buf); err != nil { // also reads the session ticket
					b.Fatal(err)
				}
				return c.ConnectionState().DidResume
			}
			one() // primes the session cache
			start := cpuNow(b)
			b.ResetTimer()
			resumed := 0
			for range b.N {
				if one() {
					resumed++
				}
			}
			b.StopTimer()
			if resume && resumed < b.N {
				b.Fatalf("%d of %d connections resumed", resumed, b.N)
			}
			b.ReportMetric(float64((cpuNow(b)-start).Microseconds())/float64(b.N), "cpu-µs/op")
		})
	}
}
