package consul

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/hashicorp/consul/api"
)

// fakeAgent is a scripted local agent for the registrar: it stores
// registrations, answers /v1/agent/service/<id> as a blocking query on a
// content hash, and can be restarted (forgetting everything) or taken down.
type fakeAgent struct {
	mu          sync.Mutex
	services    map[string]*api.AgentServiceRegistration
	registers   int
	deregisters int
	lookups     int
	down        bool
	restarted   chan struct{} // closed by restart; ends blocking lookups
}

func newFakeAgent() *fakeAgent {
	return &fakeAgent{services: map[string]*api.AgentServiceRegistration{}, restarted: make(chan struct{})}
}

// restart forgets every registration and fails the lookups in flight, as
// a restarted in-memory agent does.
func (a *fakeAgent) restart() {
	a.mu.Lock()
	defer a.mu.Unlock()
	clear(a.services)
	close(a.restarted)
	a.restarted = make(chan struct{})
}

func (a *fakeAgent) setDown(v bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.down = v
}

func (a *fakeAgent) counts() (registers, deregisters, lookups int, present bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, present = a.services["web-1"]
	return a.registers, a.deregisters, a.lookups, present
}

func (a *fakeAgent) registration(id string) *api.AgentServiceRegistration {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.services[id]
}

func (a *fakeAgent) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	if a.down {
		a.mu.Unlock()
		http.Error(w, "agent down", http.StatusServiceUnavailable)
		return
	}
	restarted := a.restarted
	switch {
	case r.Method == http.MethodPut && r.URL.Path == "/v1/agent/service/register":
		var reg api.AgentServiceRegistration
		if err := json.NewDecoder(r.Body).Decode(&reg); err != nil {
			a.mu.Unlock()
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		a.services[reg.ID] = &reg
		a.registers++
		a.mu.Unlock()
		return
	case r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/v1/agent/service/deregister/"):
		id := strings.TrimPrefix(r.URL.Path, "/v1/agent/service/deregister/")
		_, ok := a.services[id]
		delete(a.services, id)
		a.deregisters++
		a.mu.Unlock()
		if !ok {
			http.Error(w, "Unknown service ID", http.StatusNotFound)
		}
		return
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v1/agent/service/"):
		id := strings.TrimPrefix(r.URL.Path, "/v1/agent/service/")
		a.lookups++
		reg, ok := a.services[id]
		a.mu.Unlock()
		if !ok {
			http.Error(w, "unknown service ID: "+id, http.StatusNotFound)
			return
		}
		const hash = "h1"
		if q := r.URL.Query(); q.Get("hash") == hash {
			wait, _ := time.ParseDuration(q.Get("wait"))
			t := time.NewTimer(wait)
			defer t.Stop()
			select {
			case <-t.C:
			case <-restarted:
				http.Error(w, "agent restarting", http.StatusInternalServerError)
				return
			case <-r.Context().Done():
				return
			}
		}
		w.Header().Set("X-Consul-ContentHash", hash)
		_ = json.NewEncoder(w).Encode(&api.AgentService{ID: reg.ID, Service: reg.Name, Port: reg.Port})
		return
	}
	a.mu.Unlock()
	http.NotFound(w, r)
}

func testRegistration() Registration {
	return Registration{ID: "web-1", Name: "web", Address: "127.0.0.1", Port: 15006, Weight: 10,
		Meta:  map[string]string{"sidemesh_version": "test"},
		Check: &Check{HTTP: "http://127.0.0.1:15000/ready", Interval: time.Second}}
}

func TestRegistrarKeepsRegistration(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		agent := newFakeAgent()
		r, err := NewRegistrar(Config{Address: "127.0.0.1:8500"}, testRegistration(), RegistrarOptions{Transport: handlerTransport{agent}})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()

		time.Sleep(time.Second)
		synctest.Wait()
		if reg, _, _, present := agent.counts(); reg != 1 || !present || !r.Stats().Registered {
			t.Fatalf("after start: %d registrations, present %v, stats %+v", reg, present, r.Stats())
		}
		got := agent.registration("web-1")
		if got.Weights == nil || got.Weights.Passing != 10 || got.Port != 15006 || got.Meta["sidemesh_version"] != "test" || got.Check == nil || got.Check.HTTP != "http://127.0.0.1:15000/ready" {
			t.Fatalf("registered %+v", got)
		}

		// Nothing lost for two minutes: no re-registration, and the agent
		// is watched with blocking lookups, not polled.
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		reg, _, lookups, _ := agent.counts()
		if reg != 1 || lookups > 2*60/30+2 {
			t.Fatalf("quiet 2 minutes: %d registrations, %d lookups; want 1 and at most 6", reg, lookups)
		}

		// The agent restarts and forgets us: registered again.
		agent.restart()
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if reg, _, _, present := agent.counts(); reg != 2 || !present {
			t.Fatalf("after an agent restart: %d registrations, present %v; want 2, true", reg, present)
		}
		if st := r.Stats(); st.Registrations != 2 || !st.Registered {
			t.Fatalf("stats after restore = %+v", st)
		}

		// The agent is down for a while, then comes back empty.
		agent.setDown(true)
		agent.restart()
		time.Sleep(30 * time.Second)
		synctest.Wait()
		if st := r.Stats(); st.ConsecutiveFailures == 0 || st.LastError == nil {
			t.Fatalf("stats while the agent is down = %+v", st)
		}
		agent.setDown(false)
		time.Sleep(DefaultMaxBackoff + DefaultMinResyncInterval + time.Second)
		synctest.Wait()
		if reg, _, _, present := agent.counts(); reg != 3 || !present {
			t.Fatalf("after the agent came back: %d registrations, present %v; want 3, true", reg, present)
		}

		// Graceful shutdown deregisters.
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Run: %v", err)
		}
		if _, dereg, _, present := agent.counts(); dereg != 1 || present {
			t.Fatalf("after shutdown: %d deregistrations, present %v", dereg, present)
		}
		if r.Stats().Registered {
			t.Fatal("stats still say registered")
		}
	})
}

func TestRegistrarDeregisterFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		agent := newFakeAgent()
		r, err := NewRegistrar(Config{Address: "127.0.0.1:8500"}, testRegistration(), RegistrarOptions{Transport: handlerTransport{agent}})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()
		time.Sleep(time.Second)
		agent.setDown(true)
		cancel()
		if err := <-done; !errors.Is(err, ErrRegistration) {
			t.Fatalf("Run = %v, want ErrRegistration", err)
		}
	})
}

func TestNewRegistrarValidates(t *testing.T) {
	reg := testRegistration()
	reg.Weight = 0
	if _, err := NewRegistrar(Config{}, reg, RegistrarOptions{}); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "service.weight") {
		t.Fatalf("NewRegistrar = %v, want ErrConfig naming service.weight", err)
	}
}
