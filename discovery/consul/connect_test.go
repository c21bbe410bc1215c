package consul

import (
	"errors"
	"net/http"
	"testing"

	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/internal/testenv"
	"github.com/sidemesh/sidemesh/mtls"
)

func TestEndpointOfMarksMeshInstances(t *testing.T) {
	e := entry("a", "127.0.0.1", 7001, 1, 1)
	e.Service.Meta = map[string]string{discovery.MetaMTLS: "true"}
	if ep, ok := endpointOf(e); !ok || !ep.MTLS {
		t.Fatalf("endpointOf = %+v, %v; want MTLS", ep, ok)
	}
	e.Service.Meta[discovery.MetaMTLS] = "false"
	if ep, _ := endpointOf(e); ep.MTLS {
		t.Fatal("meta false marked as a mesh instance")
	}
}

func TestPolicyOfL7(t *testing.T) {
	p, err := policyOf("api", []*api.Intention{
		{SourceName: "web", Permissions: []*api.IntentionPermission{
			{Action: api.IntentionActionDeny, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/admin", Methods: []string{"POST"}}},
			{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathRegex: "^/v1/", Header: []api.IntentionHTTPHeaderPermission{{Name: "x-tenant", Exact: "a"}}}},
		}},
		{SourceName: "*", Action: api.IntentionActionDeny},
	})
	if err != nil {
		t.Fatal(err)
	}
	r, _ := http.NewRequest("POST", "http://api/admin/users", nil)
	if d := p.Request("web", r); d.Allowed {
		t.Errorf("POST /admin allowed: %s", d.Reason)
	}
	r, _ = http.NewRequest("GET", "http://api/v1/x", nil)
	r.Header.Set("X-Tenant", "a")
	if d := p.Request("web", r); !d.Allowed {
		t.Errorf("GET /v1/x with tenant a refused: %s", d.Reason)
	}
	if d := p.Connection("billing"); d.Allowed {
		t.Error("wildcard deny allowed billing")
	}
	_, err = policyOf("api", []*api.Intention{{SourceName: "web", Permissions: []*api.IntentionPermission{{Action: "deny", HTTP: &api.IntentionHTTPPermission{PathRegex: "("}}}}})
	if err == nil {
		t.Fatal("a bad regex was accepted")
	}
}

func TestConnectDisabledMessage(t *testing.T) {
	if !connectDisabled(errors.New(`Unexpected response code: 500 (Connect must be enabled in order to use this endpoint)`)) {
		t.Fatal("the agent's Connect-disabled answer is not recognised")
	}
	if connectDisabled(errors.New("dial tcp 127.0.0.1:8500: connect: connection refused")) {
		t.Fatal("an unreachable agent taken for Connect disabled")
	}
}

// Against a real agent: the identity and the intentions arrive, the default
// is the agent's (allow in -dev), and an intention change arrives by the
// blocking query.
func TestConnectAgainstAgent(t *testing.T) {
	agent := testenv.StartConsul(t)
	src, err := New(Config{Address: agent.Addr()}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	store, authz := &mtls.Store{}, &mtls.Authorizer{}
	conn, err := src.StartConnect("api", store, authz)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "leaf and intentions", func() error {
		if store.Current() == nil || authz.Policy() == nil {
			return errors.New("not yet")
		}
		return nil
	})
	if id := store.Current().ID.String(); !strings.HasSuffix(id, "/svc/api") {
		t.Fatalf("identity %s", id)
	}
	if d := authz.Connection("web"); !d.Allowed {
		t.Fatalf("web → api with no intention in -dev: %s", d.Reason)
	}
	cc := agent.Client(t)
	if _, _, err := cc.ConfigEntries().Set(&api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "api",
		Sources: []*api.SourceIntention{{Name: "web", Action: api.IntentionActionDeny}}}, nil); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "deny intention arrives", func() error {
		if d := authz.Connection("web"); d.Allowed {
			return errors.New(d.Reason)
		}
		return nil
	})
	// The agent goes away: the identity and the intentions stay in force.
	leaf := store.Current()
	agent.Stop()
	testenv.Eventually(t, 20*time.Second, "a Connect query fails", func() error {
		if conn.Failures() == 0 {
			return errors.New("no failure yet")
		}
		return nil
	})
	if store.Current() != leaf {
		t.Fatal("the leaf changed while the agent was down")
	}
	if d := authz.Connection("web"); d.Allowed {
		t.Fatalf("the deny intention was lost with the agent: %s", d.Reason)
	}
}
