package sidecar

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/hashicorp/consul/api"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sidemesh/sidemesh/internal/testenv"
	"github.com/sidemesh/sidemesh/xds"
)

// startControlPlane runs `sidemesh xds` in process from a config document.
func startControlPlane(t *testing.T, doc string) *ControlPlane {
	t.Helper()
	cfg, err := Parse("cp.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	cp, err := NewControlPlane(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.Start(); err != nil {
		t.Fatal(err)
	}
	if err := cp.StartAdmin("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		cp.Stop(ctx)
	})
	return cp
}

// adsStream opens an ADS stream (state of the world) to addr.
func adsStream(t *testing.T, addr string) discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); conn.Close() })
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func getClients(t *testing.T, cp *ControlPlane) []xds.ClientInfo {
	t.Helper()
	resp, err := http.Get("http://" + cp.AdminAddr() + "/clients")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out []xds.ClientInfo
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

func clientACKed(cs []xds.ClientInfo, node, typ, version string) bool {
	for _, c := range cs {
		if c.Node == node && c.ACKed[typ] == version {
			return true
		}
	}
	return false
}

// Two replicas fed by one Consul serve a service registered there that no
// file lists; a client moved from one to the other gets the same version
// (nothing new); both list it in /clients; a NACKing client shows its
// detail there while another client on the same replica is unaffected.
func TestControlPlaneReplicasFromConsul(t *testing.T) {
	agent := testenv.StartConsul(t)
	client := agent.Client(t)
	if err := client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "pay-1", Name: "pay", Address: "127.0.0.1", Port: 7001}); err != nil {
		t.Fatal(err)
	}
	doc := fmt.Sprintf("discovery: {consul: {address: %q}}\nxds_server: {listen: 127.0.0.1:0, debounce: 10ms}\ndefaults: {lb_policy: least_request}\n", agent.Addr())
	a, b := startControlPlane(t, doc), startControlPlane(t, doc)

	fetch := func(st discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient, node, version string) *discoveryv3.DiscoveryResponse {
		t.Helper()
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: resource.ClusterType, VersionInfo: version}); err != nil {
			t.Fatal(err)
		}
		resp, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	ack := func(st discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient, resp *discoveryv3.DiscoveryResponse) {
		t.Helper()
		if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resource.ClusterType, VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}); err != nil {
			t.Fatal(err)
		}
	}
	// Wait until both replicas serve pay (the catalog query and the
	// health query have answered).
	testenv.Eventually(t, 10*time.Second, "both replicas serving pay", func() error {
		for _, cp := range []*ControlPlane{a, b} {
			if got := cp.Server().Stats().Services; strings.Join(got, ",") != "pay" {
				return fmt.Errorf("%s serves %v", cp.Addr(), got)
			}
		}
		if va, vb := a.Server().Versions(), b.Server().Versions(); va[resource.EndpointType] != vb[resource.EndpointType] || va[resource.ClusterType] != vb[resource.ClusterType] {
			return fmt.Errorf("versions differ: %v vs %v", va, vb)
		}
		return nil
	})

	stA := adsStream(t, a.Addr())
	first := fetch(stA, "mover", "")
	if len(first.GetResources()) != 1 {
		t.Fatalf("replica a served %d clusters, want pay only", len(first.GetResources()))
	}
	ack(stA, first)
	testenv.Eventually(t, 5*time.Second, "a lists the mover", func() error {
		if !clientACKed(getClients(t, a), "mover", resource.ClusterType, first.GetVersionInfo()) {
			return fmt.Errorf("clients %+v", getClients(t, a))
		}
		return nil
	})

	// The mover reconnects to b, presenting the version it has.
	stB := adsStream(t, b.Addr())
	again := fetch(stB, "mover", first.GetVersionInfo())
	if again.GetVersionInfo() != first.GetVersionInfo() {
		t.Fatalf("replica b answered version %q, a served %q: a moved client would get a new version", again.GetVersionInfo(), first.GetVersionInfo())
	}
	ack(stB, again)
	testenv.Eventually(t, 5*time.Second, "b lists the mover", func() error {
		if !clientACKed(getClients(t, b), "mover", resource.ClusterType, first.GetVersionInfo()) {
			return fmt.Errorf("clients %+v", getClients(t, b))
		}
		return nil
	})

	// A client that NACKs on a shows the detail; the mover on a is not
	// affected (still ACKed, no NACK).
	stN := adsStream(t, a.Addr())
	resp := fetch(stN, "rejecter", "")
	if err := stN.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resource.ClusterType, ResponseNonce: resp.GetNonce(),
		ErrorDetail: &statuspb.Status{Code: 3, Message: "cluster pay: test rejection"}}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "the NACK in /clients", func() error {
		for _, c := range getClients(t, a) {
			switch c.Node {
			case "rejecter":
				if c.LastNACK == nil || c.LastNACK.Detail != "cluster pay: test rejection" || c.LastNACK.Version != resp.GetVersionInfo() {
					return fmt.Errorf("rejecter: %+v", c)
				}
			case "mover":
				if c.LastNACK != nil || c.ACKed[resource.ClusterType] != first.GetVersionInfo() {
					return fmt.Errorf("mover affected: %+v", c)
				}
			}
		}
		if n := len(getClients(t, a)); n != 2 {
			return fmt.Errorf("%d clients on a, want 2", n)
		}
		return nil
	})

	// The admin's other endpoints.
	for path, want := range map[string]string{
		"/ready":       "ready",
		"/metrics":     `sidemesh_xds_server_nacks_by_type_total{type="Cluster"} 1`,
		"/config_dump": `"services": [`,
	} {
		r, err := http.Get("http://" + a.AdminAddr() + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(r.Body)
		r.Body.Close()
		if r.StatusCode != 200 || !strings.Contains(string(body), want) {
			t.Errorf("GET %s: %d, want %q in:\n%s", path, r.StatusCode, want, body)
		}
	}
}

// discovery.xds.address is one host:port or a list; an empty list is a
// config error naming the key. xds_server.debounce must be > 0.
func TestConfigXDSAddressListAndDebounce(t *testing.T) {
	for doc, want := range map[string]string{
		"discovery: {xds: {address: cp:18000}}\n":                                       "cp:18000",
		"discovery: {xds: {address: [cp-1:18000, cp-2:18000]}}\n":                       "cp-1:18000,cp-2:18000",
		"discovery: {xds: {address: []}}\n":                                             "discovery.xds.address: must not be empty",
		"discovery: {xds: {address: [cp-1:18000, cp-2]}}\n":                             `discovery.xds.address[1]: "cp-2" is not host:port`,
		"discovery: {file: ep.yaml}\nxds_server: {listen: 127.0.0.1:0, debounce: 0s}\n": "xds_server.debounce",
	} {
		cfg, err := Parse("cfg.yaml", []byte(doc))
		if err != nil {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%q: error %v, want it to name %q", doc, err, want)
			}
			continue
		}
		if cfg.Discovery.XDS == nil || cfg.Discovery.XDS.Address.String() != want {
			t.Errorf("%q: parsed %+v, want address %s", doc, cfg.Discovery.XDS, want)
		}
	}
	cfg, err := Parse("cfg.yaml", []byte("discovery: {file: ep.yaml}\nxds_server: {listen: 127.0.0.1:0}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if d := xdsDebounce(cfg); d != DefaultXDSDebounce {
		t.Fatalf("default debounce %v, want %v", d, DefaultXDSDebounce)
	}
}

// TestControlPlaneAdminPprof: the control plane's admin serves Go profiles
// only with admin.pprof, as the sidecar's does.
func TestControlPlaneAdminPprof(t *testing.T) {
	for _, on := range []bool{false, true} {
		h := controlPlaneAdmin(nil, on)
		for _, path := range []string{"/debug/pprof/", "/debug/pprof/heap?debug=1", "/debug/pprof/goroutine?debug=1", "/debug/pprof/cmdline"} {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
			want := http.StatusNotFound
			if on {
				want = http.StatusOK
			}
			if rec.Code != want {
				t.Errorf("pprof %v: GET %s = %d, want %d", on, path, rec.Code, want)
			}
		}
	}
}
