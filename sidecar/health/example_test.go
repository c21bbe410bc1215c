package health_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/health"
)

// A cluster wires a Checker like this: SetHosts on every endpoint snapshot,
// Healthy when it rebuilds its picker, OnChange to trigger that rebuild.
func Example() {
	// The first check starts as soon as SetHosts returns; the backend holds
	// its answer until the example has looked, so "before" is really before.
	looked := make(chan struct{})
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-looked
		if r.URL.Path != "/healthz" || r.Host != "api" {
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	defer backend.Close()
	addr := backend.Listener.Addr().String()

	cfg := health.Config{HTTP: &health.HTTPCheck{Path: "/healthz"}, Interval: 50 * time.Millisecond}
	cfg.SetDefaults()
	if err := cfg.Validate("upstreams[0].health_check"); err != nil {
		fmt.Println(err)
		return
	}
	rebuild := make(chan struct{}, 1)
	c := health.New(cfg, health.Options{
		ServiceName: "api",
		OnChange: func() {
			select {
			case rebuild <- struct{}{}:
			default:
			}
		},
	})
	defer c.Close()

	c.SetHosts([]string{addr})
	fmt.Println("before the first check:", c.Healthy(addr))
	close(looked)
	<-rebuild // the picker would be rebuilt here
	fmt.Println("after the first check:", c.Healthy(addr))
	// Output:
	// before the first check: false
	// after the first check: true
}
