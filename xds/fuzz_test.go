package xds

import (
	"fmt"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/proto"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/sidecar/health"
	"github.com/sidemesh/sidemesh/upstream"
)

// seedClusters are the Clusters the server produces for the settings the
// golden files cover, one per policy and per health checker.
func seedClusters() []*clusterv3.Cluster {
	var out []*clusterv3.Cluster
	for _, p := range balancer.Policies() {
		u := Defaults("api")
		u.Settings.LBPolicy = p
		u.Settings.LB.Maglev.TableSize = 251
		out = append(out, Cluster(u))
	}
	for _, hc := range []*health.Config{
		{HTTP: &health.HTTPCheck{Path: "/healthz", ExpectedStatuses: []health.StatusRange{{Start: 200, End: 300}}}},
		{TCP: &health.TCPCheck{Send: "PING", Expect: "PONG"}},
		{GRPC: &health.GRPCCheck{ServiceName: "s"}, Interval: time.Second},
	} {
		out = append(out, Cluster(Upstream{Service: "hc", Settings: upstream.Settings{HealthCheck: hc}}))
	}
	return append(out, Cluster(Upstream{Service: "bare"}))
}

// FuzzDecodeCluster: any bytes that parse as a Cluster decode without
// panicking, and a rejection names the Cluster.
func FuzzDecodeCluster(f *testing.F) {
	for _, c := range seedClusters() {
		b, err := proto.Marshal(c)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c := &clusterv3.Cluster{}
		if proto.Unmarshal(data, c) != nil {
			return
		}
		d, err := DecodeCluster(c)
		if err != nil {
			if want := fmt.Sprintf("Cluster %q", c.GetName()); !strings.Contains(err.Error(), want) {
				t.Fatalf("error %q does not name %s", err, want)
			}
			return
		}
		if d.Service != c.GetName() || d.EDSName == "" {
			t.Fatalf("decoded %q (EDS %q) from Cluster %q", d.Service, d.EDSName, c.GetName())
		}
		// What decodes is served back as is: the translation of a decoded
		// Cluster decodes to the same settings.
		again, err := DecodeCluster(Cluster(d.Upstream))
		if err != nil {
			t.Fatalf("re-decoding the translation of %s: %v", dump(d.Settings), err)
		}
		if dump(again.Settings) != dump(d.Settings) {
			t.Fatalf("round trip changed the settings:\n got %s\nwant %s", dump(again.Settings), dump(d.Settings))
		}
	})
}

// FuzzDecodeLoadAssignment: any bytes that parse as a ClusterLoadAssignment
// decode without panicking, a rejection names the assignment, and what is
// accepted makes a valid snapshot.
func FuzzDecodeLoadAssignment(f *testing.F) {
	snap, err := discovery.NewSnapshot("api", 1, []discovery.Endpoint{
		{Address: "127.0.0.1:7001", Weight: 1},
		{Address: "[::1]:7002", Weight: 3, Health: discovery.Degraded, Meta: map[string]string{"zone": "b"}},
		{Address: "127.0.0.2:7003", Weight: 2, Health: discovery.Draining},
	})
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []*discovery.Snapshot{snap, nil} {
		cla, err := loadAssignment("api", s)
		if err != nil {
			f.Fatal(err)
		}
		b, err := proto.Marshal(cla)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cla := &endpointv3.ClusterLoadAssignment{}
		if proto.Unmarshal(data, cla) != nil {
			return
		}
		eps, err := DecodeLoadAssignment(cla)
		if err != nil {
			if want := fmt.Sprintf("ClusterLoadAssignment %q", cla.GetClusterName()); !strings.Contains(err.Error(), want) {
				t.Fatalf("error %q does not name %s", err, want)
			}
			return
		}
		if _, err := discovery.NewSnapshot(cla.GetClusterName(), 1, eps); err != nil {
			t.Fatalf("accepted endpoints make no snapshot: %v", err)
		}
	})
}
