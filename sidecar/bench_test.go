package sidecar

import (
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"

	"github.com/sidemesh/sidemesh/sidecar/balancer"
)

var body100 = strings.Repeat("x", 100)

func benchBackend(b *testing.B) *backend {
	return startBackend(b, "b", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, body100)
	})
}

func runLoad(b *testing.B, url string) {
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := c.Get(url)
			if err != nil {
				b.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Fatalf("status %d", resp.StatusCode)
			}
		}
	})
}

// BenchmarkProxyHTTP1 is the whole data path in-process: client → outbound
// listener → balancer → pooled connection → backend, 100-byte bodies.
func BenchmarkProxyHTTP1(b *testing.B) {
	be := benchBackend(b)
	s, _ := startSidecar(b, oneUpstream, endpointsYAML("api", be.addr, 1))
	runLoad(b, "http://"+s.UpstreamAddr("api")+"/")
}

// BenchmarkDirect is the baseline: the same client straight to the backend.
func BenchmarkDirect(b *testing.B) {
	be := benchBackend(b)
	runLoad(b, "http://"+be.addr+"/")
}

// BenchmarkStdlibReverseProxy is net/http/httputil with a tuned transport:
// the baseline our proxy path must beat.
func BenchmarkStdlibReverseProxy(b *testing.B) {
	be := benchBackend(b)
	u, _ := url.Parse("http://" + be.addr)
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.Transport = &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}
	front := startBackend(b, "front", rp.ServeHTTP)
	runLoad(b, "http://"+front.addr+"/")
}

// BenchmarkClusterPick is a pick through the cluster (atomic load + policy).
func BenchmarkClusterPick(b *testing.B) {
	for _, policy := range []string{balancer.RoundRobin, balancer.WeightedRandom, balancer.LeastRequest} {
		b.Run(policy, func(b *testing.B) {
			be := benchBackend(b)
			s, _ := startSidecar(b, strings.Replace(oneUpstream, "listen: 127.0.0.1:0", "listen: 127.0.0.1:0\n    lb_policy: "+policy, 1),
				endpointsYAML("api", be.addr, 1, "127.0.0.1:1", 2, "127.0.0.1:2", 3))
			c := s.Cluster("api")
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				info := &balancer.PickInfo{}
				for pb.Next() {
					p, err := c.pick(info, nil)
					if err != nil {
						b.Fatal(err)
					}
					p.Done(DoneInfo{})
				}
			})
		})
	}
}

func TestClusterPickAllocs(t *testing.T) {
	be := startBackend(t, "b", nil)
	s, _ := startSidecar(t, oneUpstream, endpointsYAML("api", be.addr, 1, "127.0.0.1:1", 2))
	c := s.Cluster("api")
	info := &balancer.PickInfo{}
	if n := testing.AllocsPerRun(1000, func() {
		p, _ := c.pick(info, nil)
		p.Done(DoneInfo{})
	}); n != 0 {
		t.Fatalf("cluster pick allocates %v per op", n)
	}
}
