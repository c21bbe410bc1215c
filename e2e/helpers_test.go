package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/testenv"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// sidemeshBin is $SIDEMESH_BIN (what `make test` builds) or a fresh build
// of ./cmd/sidemesh into a temporary directory.
func sidemeshBin(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		if p := os.Getenv("SIDEMESH_BIN"); p != "" {
			binPath = p
			return
		}
		dir, err := os.MkdirTemp("", "sidemesh-e2e-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "sidemesh")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/sidemesh")
		cmd.Dir = testenv.RepoRoot(t)
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// freeAddr is a free 127.0.0.1:port.
func freeAddr(t testing.TB) string {
	return "127.0.0.1:" + strconv.Itoa(testenv.FreePorts(t, 1)[0])
}

// Sidecar is a running `sidemesh run` process.
type Sidecar struct {
	*testenv.Process
	Admin  string // host:port
	Config string // path of its config file
	t      testing.TB
}

// startSidecar writes cfg to a file and runs `sidemesh run -c` on it,
// waiting until /ready answers 200 (or, with waitReady false, until the
// admin port answers at all).
func startSidecar(t testing.TB, name, cfg string, waitReady bool) *Sidecar {
	t.Helper()
	admin := ""
	for _, line := range strings.Split(cfg, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "admin:"); ok {
			admin = strings.TrimSpace(v)
		}
	}
	if admin == "" {
		admin = freeAddr(t)
		cfg = "admin: " + admin + "\n" + cfg
	}
	path := filepath.Join(t.TempDir(), name+".yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	p := testenv.StartProcess(t, name, sidemeshBin(t), "run", "-c", path)
	s := &Sidecar{Process: p, Admin: admin, Config: path, t: t}
	p.WaitReady(30*time.Second, func() error {
		resp, err := http.Get("http://" + admin + "/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if waitReady && resp.StatusCode != 200 {
			return fmt.Errorf("/ready = %d", resp.StatusCode)
		}
		return nil
	})
	return s
}

// Terminate sends SIGTERM and returns the exit code.
func (s *Sidecar) Terminate(t testing.TB) int {
	t.Helper()
	if err := s.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	code, err := s.Wait(30 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return code
}

// Get fetches an admin path.
func (s *Sidecar) Get(t testing.TB, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + s.Admin + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// ClusterView is the part of /clusters the tests read.
type ClusterView struct {
	Name     string `json:"name"`
	LBPolicy string `json:"lb_policy"`
	Breakers struct {
		Requests struct {
			Limit uint64 `json:"limit"`
		} `json:"requests"`
	} `json:"circuit_breakers"`
	Version        uint64  `json:"version"`
	Panic          bool    `json:"panic_mode"`
	StaleSeconds   float64 `json:"stale_seconds"`
	DiscoveryError string  `json:"discovery_error"`
	Endpoints      []struct {
		Address         string `json:"address"`
		Weight          uint32 `json:"weight"`
		EffectiveWeight uint32 `json:"effective_weight"`
		Health          string `json:"health"`
		RqTotal         uint64 `json:"rq_total"`
		RqError         uint64 `json:"rq_error"`
		EjectionsTotal  uint64 `json:"ejections_total"`
	} `json:"endpoints"`
}

// Cluster returns one cluster of /clusters.
func (s *Sidecar) Cluster(t testing.TB, name string) ClusterView {
	t.Helper()
	_, body := s.Get(t, "/clusters")
	var v struct {
		Clusters []ClusterView `json:"clusters"`
	}
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("/clusters: %v: %s", err, body)
	}
	for _, c := range v.Clusters {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("/clusters has no %q: %s", name, body)
	return ClusterView{}
}

// Backend is an HTTP server on 127.0.0.1 that names itself in X-Backend
// and counts its hits.
type Backend struct {
	Name string
	Addr string
	Hits atomic.Int64
	srv  *http.Server
}

func startBackend(t testing.TB, name string, h http.HandlerFunc) *Backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &Backend{Name: name, Addr: ln.Addr().String()}
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	b.srv = &http.Server{Protocols: &p, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.Hits.Add(1)
		w.Header().Set("X-Backend", name)
		if h != nil {
			h(w, r)
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "hello from %s", name)
	})}
	go b.srv.Serve(ln)
	t.Cleanup(func() { b.srv.Close() })
	return b
}

// load sends n GETs to url (c concurrent), returning hits per X-Backend and
// the number of failures (errors or non-200).
func load(t testing.TB, url string, n, c int) (map[string]int, int) {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: c}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	var mu sync.Mutex
	counts := map[string]int{}
	failed := 0
	jobs := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < c; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				resp, err := client.Get(url)
				if err != nil {
					mu.Lock()
					failed++
					mu.Unlock()
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				mu.Lock()
				if resp.StatusCode != 200 {
					failed++
				} else {
					counts[resp.Header.Get("X-Backend")]++
				}
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < n; i++ {
		jobs <- struct{}{}
	}
	close(jobs)
	wg.Wait()
	return counts, failed
}
