package file

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/internal/confyaml"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParse(t *testing.T) {
	tests := []struct {
		name, doc, err string
		want           map[string][]discovery.Endpoint
	}{
		{name: "ok", doc: "services:\n  api:\n    - {address: 127.0.0.1:7001, weight: 1}\n    - {address: 127.0.0.1:7002, weight: 3}\n",
			want: map[string][]discovery.Endpoint{"api": {{Address: "127.0.0.1:7001", Weight: 1}, {Address: "127.0.0.1:7002", Weight: 3}}}},
		{name: "default weight", doc: "services:\n  api:\n    - {address: 127.0.0.1:7001}\n",
			want: map[string][]discovery.Endpoint{"api": {{Address: "127.0.0.1:7001", Weight: 1}}}},
		{name: "zero weight", doc: "services:\n  api:\n    - {address: 127.0.0.1:7001, weight: 0}\n",
			err: "ep.yaml:3: services.api[0] (127.0.0.1:7001): weight 0 must be an integer in 1..16777216"},
		{name: "negative weight", doc: "services:\n  api:\n    - {address: 127.0.0.1:7001, weight: -2}\n",
			err: "services.api[0] (127.0.0.1:7001): weight -2 must be"},
		{name: "fractional weight", doc: "services:\n  api:\n    - {address: 127.0.0.1:7001, weight: 1.5}\n",
			err: `ep.yaml:3: services.api[0].weight: 1.5 is not an integer`},
		{name: "quoted weight", doc: "services:\n  api:\n    - address: 127.0.0.1:7001\n      weight: \"2\"\n",
			err: `ep.yaml:4: services.api[0].weight: "2" is not an integer`},
		{name: "priority and zone", doc: "services:\n  api:\n    - {address: 127.0.0.1:7001, zone: a}\n    - {address: 127.0.0.1:7002, priority: 1, zone: b}\n",
			want: map[string][]discovery.Endpoint{"api": {{Address: "127.0.0.1:7001", Weight: 1, Zone: "a"}, {Address: "127.0.0.1:7002", Weight: 1, Priority: 1, Zone: "b"}}}},
		{name: "negative priority", doc: "services:\n  api:\n    - {address: 127.0.0.1:7001}\n    - {address: 127.0.0.1:7002, priority: -1}\n",
			err: "ep.yaml:4: services.api[1].priority (127.0.0.1:7002): -1 must be an integer in 0..127"},
		{name: "bad address", doc: "services:\n  api:\n    - {address: localhost, weight: 1}\n",
			err: `ep.yaml:3: services.api[0]: address "localhost" is not host:port`},
		{name: "unknown key", doc: "services:\n  api:\n    - {adress: 127.0.0.1:1}\n",
			err: `ep.yaml:3: services.api[0].adress: unknown key (want address, weight, priority, zone)`},
		{name: "duplicate", doc: "services:\n  api:\n    - {address: 127.0.0.1:1}\n    - {address: 127.0.0.1:1}\n",
			err: "services.api[1]: address 127.0.0.1:1 repeats services.api[0]"},
		{name: "syntax", doc: "services:\n  api: [\n", err: "ep.yaml:2: did not find expected node content"},
		{name: "no services", doc: "foo: 1\n", err: `ep.yaml:1: foo: unknown key (want services)`},
		{name: "services not a map", doc: "services:\n  - api\n", err: `ep.yaml:2: services: must be a mapping, not a list`},
		{name: "endpoints not a list", doc: "services:\n  api: 127.0.0.1:1\n", err: `ep.yaml:2: services.api: must be a list, not "127.0.0.1:1"`},
		{name: "empty", doc: "# nothing\n", err: "ep.yaml: empty document"},
		{name: "missing services", doc: "{}\n", err: "ep.yaml: missing key `services`"},
		{name: "variables are not expanded", doc: "services:\n  api:\n    - {address: \"${API}\"}\n",
			err: `ep.yaml:3: services.api[0]: address "${API}" is not host:port`},
		{name: "error in an aliased endpoint", doc: "services:\n  api:\n    - &e {address: 127.0.0.1:1}\n    - *e\n",
			err: "ep.yaml:4: services.api[1]: address 127.0.0.1:1 repeats services.api[0]"},
		{name: "an anchor under an unknown key", doc: `defaults: &d {weight: 2}
services: {}`, err: "ep.yaml:1: defaults: unknown key (want services)"},
		{name: "anchors, aliases and merge keys", doc: `services:
  api: &api
    - &one {address: 127.0.0.1:7001, weight: 2}
    - {<<: *one, address: 127.0.0.1:7002}
    - <<: *one
      address: 127.0.0.1:7003
      weight: 5
  web: *api
`, want: map[string][]discovery.Endpoint{
			"api": {{Address: "127.0.0.1:7001", Weight: 2}, {Address: "127.0.0.1:7002", Weight: 2}, {Address: "127.0.0.1:7003", Weight: 5}},
			"web": {{Address: "127.0.0.1:7001", Weight: 2}, {Address: "127.0.0.1:7002", Weight: 2}, {Address: "127.0.0.1:7003", Weight: 5}},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse("ep.yaml", []byte(tc.doc))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, ErrParse) {
					t.Fatalf("err = %v, want containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got services %v, want %v", got, tc.want)
			}
			for svc, eps := range tc.want {
				if len(got[svc]) != len(eps) {
					t.Fatalf("%s: got %v want %v", svc, got[svc], eps)
				}
				for i := range eps {
					if got[svc][i].Address != eps[i].Address || got[svc][i].Weight != eps[i].Weight {
						t.Fatalf("%s[%d]: got %v want %v", svc, i, got[svc][i], eps[i])
					}
				}
			}
		})
	}
}

// aliasBomb is the "billion laughs" shape with merge keys: nine anchors,
// each merging nine aliases of the one before.
func aliasBomb() string {
	var b strings.Builder
	b.WriteString("services:\n  api:\n    - &l0 {address: 127.0.0.1:1}\n")
	for i := 1; i <= 9; i++ {
		refs := strings.TrimSuffix(strings.Repeat(fmt.Sprintf("*l%d, ", i-1), 9), ", ")
		fmt.Fprintf(&b, "    - &l%d {<<: [%s]}\n", i, refs)
	}
	return b.String()
}

func TestAliasBombRefused(t *testing.T) {
	_, err := Parse("ep.yaml", []byte(aliasBomb()))
	want := fmt.Sprintf("document expands to more than %d nodes through aliases", confyaml.DefaultMaxAliasNodes)
	if err == nil || !errors.Is(err, ErrParse) || !strings.HasPrefix(err.Error(), "file: bad endpoints file: ep.yaml:") || !strings.HasSuffix(err.Error(), want) {
		t.Fatalf("err = %v, want the expansion bound", err)
	}
}

// recorder is a Watcher that keeps what it was told.
type recorder struct {
	mu       sync.Mutex
	last     *discovery.Snapshot
	updates  int
	ambient  []error
	resource []error
}

func newRecorder() *recorder { return &recorder{} }

func (r *recorder) OnUpdate(s *discovery.Snapshot) {
	r.mu.Lock()
	r.last, r.updates = s, r.updates+1
	r.mu.Unlock()
}
func (r *recorder) OnResourceError(err error) {
	r.mu.Lock()
	r.resource = append(r.resource, err)
	r.last = nil
	r.mu.Unlock()
}
func (r *recorder) OnAmbientError(err error) {
	r.mu.Lock()
	r.ambient = append(r.ambient, err)
	r.mu.Unlock()
}

// after lets one poll interval pass (in a synctest bubble) and everything
// the poll starts settle, then checks that cond holds.
func (r *recorder) after(t *testing.T, what string, cond func() bool) {
	t.Helper()
	time.Sleep(testPollInterval)
	synctest.Wait()
	r.mu.Lock()
	defer r.mu.Unlock()
	if !cond() {
		t.Fatalf("%s: not so one poll interval (%v) later", what, testPollInterval)
	}
}

const testPollInterval = 20 * time.Millisecond

func write(t *testing.T, path, s string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestWatchFollowsEdits: every edit of the file reaches the watcher at the
// next poll (virtual time: the poller's ticker runs in a synctest bubble).
func TestWatchFollowsEdits(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ep.yaml")
	write(t, path, "services:\n  api:\n    - {address: 127.0.0.1:7001, weight: 1}\n  web:\n    - {address: 127.0.0.1:8001}\n")
	synctest.Test(t, func(t *testing.T) {
		src, err := New(path, Options{PollInterval: testPollInterval})
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		r := newRecorder()
		cancel := src.Watch("api", r)
		defer cancel()
		synctest.Wait()
		r.mu.Lock()
		if r.last == nil || len(r.last.Endpoints) != 1 {
			t.Fatalf("first snapshot %+v, want api's one endpoint at once", r.last)
		}
		v1 := r.last.Version
		r.mu.Unlock()

		// A weight change arrives as a new version.
		write(t, path, "services:\n  api:\n    - {address: 127.0.0.1:7001, weight: 5}\n  web:\n    - {address: 127.0.0.1:8001}\n")
		var v2 uint64
		r.after(t, "weight 5 seen", func() bool {
			if r.last != nil && r.last.Endpoints[0].Weight == 5 {
				v2 = r.last.Version
				return true
			}
			return false
		})
		if v2 <= v1 {
			t.Fatalf("version did not increase: %d then %d", v1, v2)
		}

		// A broken file keeps the last good endpoints and reports an ambient error with the line.
		write(t, path, "services:\n  api:\n    - {address: 127.0.0.1:7001, weight: 0}\n")
		r.after(t, "ambient error for the broken file", func() bool { return len(r.ambient) > 0 })
		r.mu.Lock()
		if r.last == nil || r.last.Endpoints[0].Weight != 5 {
			t.Fatalf("last good endpoints lost: %+v", r.last)
		}
		if msg := r.ambient[0].Error(); !strings.Contains(msg, "ep.yaml:3") || !strings.Contains(msg, "weight 0") {
			t.Fatalf("ambient error does not name file, line and weight: %v", msg)
		}
		r.mu.Unlock()
		if src.Err() == nil {
			t.Fatal("Err() should report the parse error")
		}

		// Fixed again, and a service removed: resource error for it.
		write(t, path, "services:\n  web:\n    - {address: 127.0.0.1:8001}\n")
		r.after(t, "resource error for the removed service", func() bool { return len(r.resource) > 0 })
		if src.Err() != nil {
			t.Fatalf("Err() = %v after a good file", src.Err())
		}
	})
}

func TestUnknownServiceIsResourceError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ep.yaml")
	write(t, path, "services:\n  api:\n    - {address: 127.0.0.1:7001}\n")
	synctest.Test(t, func(t *testing.T) {
		src, err := New(path, Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		r := newRecorder()
		defer src.Watch("nope", r)()
		synctest.Wait()
		r.mu.Lock()
		defer r.mu.Unlock()
		if len(r.resource) != 1 || !errors.Is(r.resource[0], discovery.ErrNotFound) {
			t.Fatalf("resource errors %v, want one ErrNotFound at once", r.resource)
		}
	})
}

func TestNewFailsOnBadFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ep.yaml")
	write(t, path, "services:\n  api:\n    - {address: 127.0.0.1:7001, weight: x}\n")
	if _, err := New(path, Options{}); err == nil || !strings.Contains(err.Error(), "services.api[0]") {
		t.Fatalf("err = %v", err)
	}
	if _, err := New(filepath.Join(t.TempDir(), "missing.yaml"), Options{}); err == nil {
		t.Fatal("missing file accepted")
	}
}

// The source keeps only the services someone watches; a later Watch reads
// its service from the last good file; a catalog watcher sees every service
// and its changes, and makes the source keep them all.
func TestSourceKeepsWatchedServicesAndLists(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "ep.yaml")
		write := func(doc string) {
			if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		write("services:\n  api: [{address: 127.0.0.1:7001}]\n  web: [{address: 127.0.0.1:8001, weight: 3}]\n")
		s, err := New(path, Options{PollInterval: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		s.mu.Lock()
		kept := len(s.current)
		s.mu.Unlock()
		if kept != 0 {
			t.Fatalf("%d services kept with no watcher, want 0", kept)
		}
		var got *discovery.Snapshot
		cancel := s.Watch("web", discovery.WatcherFuncs{Update: func(snap *discovery.Snapshot) { got = snap }})
		defer cancel()
		if got == nil || len(got.Endpoints) != 1 || got.Endpoints[0].Weight != 3 {
			t.Fatalf("web on its first watch: %+v", got)
		}
		s.mu.Lock()
		_, apiKept := s.current["api"]
		s.mu.Unlock()
		if apiKept {
			t.Fatal("api kept although nobody watches it")
		}

		var lists [][]string
		cancelCat := s.WatchServices(func(names []string) { lists = append(lists, names) })
		defer cancelCat()
		write("services:\n  api: [{address: 127.0.0.1:7001}]\n  web: [{address: 127.0.0.1:8001, weight: 3}]\n  db: [{address: 127.0.0.1:9001}]\n")
		time.Sleep(1500 * time.Millisecond)
		synctest.Wait()
		want := "[[api web] [api db web]]"
		if fmt.Sprint(lists) != want {
			t.Fatalf("catalog calls %v, want %s", lists, want)
		}
		s.mu.Lock()
		kept = len(s.current)
		s.mu.Unlock()
		if kept != 3 {
			t.Fatalf("%d services kept with a catalog watcher, want 3", kept)
		}
	})
}
