package consul

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/internal/testenv"
)

// followWithin is how soon a change in Consul must reach the watchers.
const followWithin = 5 * time.Second

// waitEndpoints waits until the recorder's last snapshot has exactly want
// (as "addr/weight/health") and returns how long that took.
func waitEndpoints(t *testing.T, rec *recorder, within time.Duration, what string, want ...string) time.Duration {
	t.Helper()
	slices.Sort(want)
	start := time.Now()
	testenv.Eventually(t, within, what, func() error {
		if got := addrs(rec.last()); !reflect.DeepEqual(got, want) {
			return fmt.Errorf("endpoints %q, want %q", got, want)
		}
		return nil
	})
	return time.Since(start)
}

func register(t *testing.T, c *api.Client, id string, port, passing, warning int, status string, tags ...string) {
	t.Helper()
	reg := &api.AgentServiceRegistration{ID: id, Name: "api", Address: "127.0.0.1", Port: port, Tags: tags,
		Weights: &api.AgentWeights{Passing: passing, Warning: warning}}
	if status != "" {
		reg.Check = &api.AgentServiceCheck{TTL: "10m", Status: status}
	}
	if err := c.Agent().ServiceRegister(reg); err != nil {
		t.Fatalf("register %s: %v", id, err)
	}
}

func TestAgentWeightsAndHealth(t *testing.T) {
	agent := testenv.StartConsul(t)
	client := agent.Client(t)
	register(t, client, "api-1", 7001, 1, 1, "")
	register(t, client, "api-2", 7002, 2, 1, api.HealthPassing)
	register(t, client, "api-3", 7003, 7, 1, api.HealthPassing)
	register(t, client, "api-4", 7004, 5, 1, api.HealthCritical)
	register(t, client, "api-5", 7005, 9, 3, api.HealthWarning)
	register(t, client, "api-6", 7006, 4, 1, "", "canary")

	src, err := New(Config{Address: agent.Addr()}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	rec := &recorder{}
	defer src.Watch("api", rec)()
	canarySrc, err := New(Config{Address: agent.Addr(), Tag: "canary"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer canarySrc.Close()
	canary := &recorder{}
	defer canarySrc.Watch("api", canary)()

	waitEndpoints(t, rec, 10*time.Second, "weights 1/2/7, critical unhealthy, warning at its Warning weight",
		"127.0.0.1:7001/1/healthy", "127.0.0.1:7002/2/healthy", "127.0.0.1:7003/7/healthy",
		"127.0.0.1:7004/5/unhealthy", "127.0.0.1:7005/3/degraded", "127.0.0.1:7006/4/healthy")
	waitEndpoints(t, canary, 10*time.Second, "tag filter", "127.0.0.1:7006/4/healthy")

	// Changes are followed through the one blocking query.
	if err := client.Agent().UpdateTTL("service:api-4", "", api.HealthPassing); err != nil {
		t.Fatal(err)
	}
	d1 := waitEndpoints(t, rec, followWithin, "api-4 passing",
		"127.0.0.1:7001/1/healthy", "127.0.0.1:7002/2/healthy", "127.0.0.1:7003/7/healthy", "127.0.0.1:7004/5/healthy",
		"127.0.0.1:7005/3/degraded", "127.0.0.1:7006/4/healthy")
	if err := client.Agent().UpdateTTL("service:api-5", "", api.HealthCritical); err != nil {
		t.Fatal(err)
	}
	if err := client.Agent().ServiceDeregister("api-1"); err != nil {
		t.Fatal(err)
	}
	d2 := waitEndpoints(t, rec, followWithin, "api-5 critical, api-1 gone",
		"127.0.0.1:7002/2/healthy", "127.0.0.1:7003/7/healthy", "127.0.0.1:7004/5/healthy",
		"127.0.0.1:7005/9/unhealthy", "127.0.0.1:7006/4/healthy")
	t.Logf("changes followed in %v and %v", d1.Round(time.Millisecond), d2.Round(time.Millisecond))

	st, _ := src.ServiceStats("api")
	if st.FailuresTotal != 0 || st.Index == 0 || st.Version < 3 {
		t.Errorf("stats = %+v", st)
	}
	// One blocking query, not a poll: a handful of queries for a handful of changes.
	if st.QueriesTotal > 20 {
		t.Errorf("%d queries for 3 changes", st.QueriesTotal)
	}
}

func TestAgentOutageAndRestart(t *testing.T) {
	agent := testenv.StartConsul(t)
	client := agent.Client(t)

	ready := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer ready.Close()
	reg := Registration{ID: "web-1", Name: "web", Address: "127.0.0.1", Port: 15006, Weight: 10,
		Meta:  map[string]string{"sidemesh_version": "test"},
		Check: &Check{HTTP: ready.URL + "/ready", Interval: 200 * time.Millisecond, Timeout: time.Second}}
	fast := RegistrarOptions{MinResyncInterval: 100 * time.Millisecond, BaseBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond}
	registrar, err := NewRegistrar(Config{Address: agent.Addr()}, reg, fast)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stopRegistrar := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- registrar.Run(ctx) }()
	stopped := false
	var stopErr error
	stop := func() error {
		if !stopped {
			stopped = true
			stopRegistrar()
			stopErr = <-runErr
		}
		return stopErr
	}
	defer stop()

	src, err := New(Config{Address: agent.Addr()}, Options{BaseBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	rec := &recorder{}
	defer src.Watch("web", rec)()
	waitEndpoints(t, rec, 10*time.Second, "the registered instance, check passing", "127.0.0.1:15006/10/healthy")
	svc, _, err := client.Agent().Service("web-1", nil)
	if err != nil || svc.Meta["sidemesh_version"] != "test" || svc.Weights.Passing != 10 {
		t.Fatalf("agent's copy: %+v, %v", svc, err)
	}

	// Agent killed: an ambient error, the last endpoints kept.
	agent.Stop()
	testenv.Eventually(t, 10*time.Second, "an ambient error", func() error {
		if _, amb, _ := rec.state(); len(amb) == 0 {
			return errors.New("none yet")
		}
		return nil
	})
	_, ambient, resource := rec.state()
	if !errors.Is(ambient[0], discovery.ErrUnavailable) || len(resource) != 0 {
		t.Fatalf("ambient %v, resource %v", ambient, resource)
	}
	if got := addrs(src.Last("web")); !reflect.DeepEqual(got, []string{"127.0.0.1:15006/10/healthy"}) {
		t.Fatalf("endpoints during the outage: %v", got)
	}
	if st, _ := src.ServiceStats("web"); st.ConsecutiveFailures == 0 || st.Stale(time.Now()) <= 0 {
		t.Fatalf("stats during the outage: %+v", st)
	}

	// Agent restarted with no memory: the registrar registers again and
	// the source follows, then follows later changes.
	agent.Restart()
	testenv.Eventually(t, 10*time.Second, "registration restored", func() error {
		svcs, err := client.Agent().Services()
		if err != nil {
			return err
		}
		if _, ok := svcs["web-1"]; !ok {
			return errors.New("web-1 not registered")
		}
		return nil
	})
	waitEndpoints(t, rec, 10*time.Second, "the restored instance", "127.0.0.1:15006/10/healthy")
	// The agent shows the registration as soon as it has it; the
	// registrar counts it when the agent's answer reaches it.
	testenv.Eventually(t, 10*time.Second, "the registrar counts the new registration", func() error {
		if st := registrar.Stats(); st.Registrations < 2 {
			return fmt.Errorf("registrar stats after the restart: %+v", st)
		}
		return nil
	})
	if err := client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "web-2", Name: "web", Address: "127.0.0.1", Port: 15007,
		Weights: &api.AgentWeights{Passing: 2, Warning: 1}}); err != nil {
		t.Fatal(err)
	}
	waitEndpoints(t, rec, followWithin, "a change after the restart", "127.0.0.1:15006/10/healthy", "127.0.0.1:15007/2/healthy")
	if st, _ := src.ServiceStats("web"); st.ConsecutiveFailures != 0 {
		t.Errorf("stats after recovery: %+v", st)
	}

	// Graceful shutdown deregisters.
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	svcs, err := client.Agent().Services()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := svcs["web-1"]; ok {
		t.Fatal("web-1 still registered after shutdown")
	}
	waitEndpoints(t, rec, followWithin, "the deregistered instance gone", "127.0.0.1:15007/2/healthy")
}

func TestSourceUnreachableAtStart(t *testing.T) {
	port := testenv.FreePorts(t, 1)[0]
	src, err := New(Config{Address: fmt.Sprintf("127.0.0.1:%d", port)}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	rec := &recorder{}
	defer src.Watch("api", rec)()
	testenv.Eventually(t, 5*time.Second, "an ambient error", func() error {
		if _, amb, _ := rec.state(); len(amb) == 0 {
			return errors.New("none yet")
		}
		return nil
	})
	updates, ambient, resource := rec.state()
	if len(updates) != 0 || len(resource) != 0 || !errors.Is(ambient[0], discovery.ErrUnavailable) {
		t.Fatalf("updates %d, ambient %v, resource %v", len(updates), ambient, resource)
	}
}

// WatchServices follows the catalog: a service registered later is listed.
func TestAgentCatalogServices(t *testing.T) {
	agent := testenv.StartConsul(t)
	client := agent.Client(t)
	register(t, client, "api-1", 7001, 1, 1, "")
	src, err := New(Config{Address: agent.Addr()}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	lists := make(chan []string, 16)
	cancel := src.WatchServices(func(names []string) { lists <- names })
	defer cancel()
	next := func(want string) {
		t.Helper()
		select {
		case got := <-lists:
			if fmt.Sprint(got) != want {
				t.Fatalf("services %v, want %s", got, want)
			}
		case <-time.After(followWithin):
			t.Fatalf("no catalog update within %v (want %s)", followWithin, want)
		}
	}
	next("[api]")
	if err := client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "db-1", Name: "db", Address: "127.0.0.1", Port: 9001}); err != nil {
		t.Fatal(err)
	}
	next("[api db]")
}
