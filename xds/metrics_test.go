package xds

import (
	"strings"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

func TestWriteMetrics(t *testing.T) {
	var b strings.Builder
	st := ClientStats{Connected: true, Streams: 2, Types: map[string]*TypeStats{
		resource.ClusterType:  {Updates: 3, ACKs: 2, NACKs: 1},
		resource.EndpointType: {Updates: 5, ACKs: 5},
	}}
	if err := WriteClientMetrics(&b, st); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"sidemesh_xds_client_connected 1\n",
		"sidemesh_xds_client_streams_total 2\n",
		`sidemesh_xds_client_updates_total{type="Cluster"} 3` + "\n",
		`sidemesh_xds_client_nacks_total{type="Cluster"} 1` + "\n",
		`sidemesh_xds_client_acks_total{type="ClusterLoadAssignment"} 5` + "\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("client metrics lack %q:\n%s", want, b.String())
		}
	}
	b.Reset()
	if err := WriteServerMetrics(&b, ServerStats{Version: "ab12", Pushes: 7, Streams: 1, NACKs: 2}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"sidemesh_xds_server_pushes_total 7\n", "sidemesh_xds_server_nacks_total 2\n", "sidemesh_xds_server_streams 1\n"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("server metrics lack %q:\n%s", want, b.String())
		}
	}
	// The runtime's figures, each with a value (the fleet benchmark
	// reads them per client).
	for _, m := range runtimeMetrics {
		i := strings.Index(b.String(), "\n"+m.name+" ")
		if i < 0 {
			t.Errorf("server metrics lack %s:\n%s", m.name, b.String())
			continue
		}
		line, _, _ := strings.Cut(b.String()[i+1:], "\n")
		if v := strings.TrimPrefix(line, m.name+" "); v == "" || (m.name == "go_goroutines" && v == "0") {
			t.Errorf("%s: %q", m.name, line)
		}
	}
}
