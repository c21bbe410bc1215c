package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"gopkg.in/yaml.v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	k8syaml "sigs.k8s.io/yaml"

	"github.com/sidemesh/sidemesh/internal/testenv"
)

// The tests in this file run sidemesh as it is deployed: every "host" is a
// pod of testenv.NewPods (a network namespace with its own address), Consul
// and Jaeger each run in a pod of their own, and an app pod is set up the
// way Kubernetes runs what `sidemesh inject` emits: the init container's
// exact arguments as root (capture), then the sidecar as the proxy uid, then
// the app as another uid.
//
// The apps themselves are servers of this test process listening inside
// their pod (testenv.Pod.Listen: the socket lives in the pod's namespace).
// Their clients must be processes of the pod running as a non-proxy uid, for
// capture matches on the socket owner's uid: hostsClient, the test binary
// re-exec'd in the pod as uid 1000 (see TestMain).

// hostsClientEnv, set in the environment of the test binary, makes it the
// app client of a pod (hostsClient) instead of running tests; its value is
// a JSON clientSpec.
const hostsClientEnv = "SIDEMESH_E2E_HOSTS_CLIENT"

func TestMain(m *testing.M) {
	if spec := os.Getenv(hostsClientEnv); spec != "" {
		os.Exit(hostsClient(spec))
	}
	os.Exit(m.Run())
}

// clientSpec is what hostsClient does: N GETs of URL with Host (when set)
// from Concurrency workers, or, with N 0, GETs until its stdin closes.
type clientSpec struct {
	TCP         string // instead of HTTP: dial this address, send a line, print what comes back
	URL         string
	Host        string
	N           int
	Concurrency int
	Traceparent string
}

// clientResult is what hostsClient prints: successful responses per
// X-Backend, and the failures (errors, non-200) with the first few reasons.
type clientResult struct {
	Counts map[string]int
	Failed int
	Errors []string
}

// Total is the number of requests made.
func (r clientResult) Total() int {
	n := r.Failed
	for _, c := range r.Counts {
		n += c
	}
	return n
}

// hostsClient runs a clientSpec and prints a clientResult as JSON.
func hostsClient(specJSON string) int {
	var spec clientSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if spec.TCP != "" {
		return tcpClient(spec.TCP)
	}
	conc := max(spec.Concurrency, 1)
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: conc}}
	var (
		mu  sync.Mutex
		res = clientResult{Counts: map[string]int{}}
	)
	fail := func(msg string) {
		mu.Lock()
		defer mu.Unlock()
		res.Failed++
		if len(res.Errors) < 5 {
			res.Errors = append(res.Errors, msg)
		}
	}
	one := func() {
		req, err := http.NewRequest("GET", spec.URL, nil)
		if err != nil {
			fail(err.Error())
			return
		}
		if spec.Host != "" {
			req.Host = spec.Host
		}
		if spec.Traceparent != "" {
			req.Header.Set("traceparent", spec.Traceparent)
		}
		resp, err := client.Do(req)
		if err != nil {
			fail(err.Error())
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			fail(fmt.Sprintf("%s: %s", resp.Status, bytes.TrimSpace(body)))
			return
		}
		mu.Lock()
		res.Counts[resp.Header.Get("X-Backend")]++
		mu.Unlock()
	}
	var stop atomic.Bool
	if spec.N == 0 {
		go func() { _, _ = io.Copy(io.Discard, os.Stdin); stop.Store(true) }()
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			for {
				if spec.N > 0 && next.Add(1) > int64(spec.N) || spec.N == 0 && stop.Load() {
					return
				}
				one()
			}
		})
	}
	wg.Wait()
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		return 1
	}
	return 0
}

// tcpClient sends a line to addr and prints the line that comes back.
func tcpClient(addr string) int {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		fmt.Fprintf(os.Stderr, "read from %s: %v (got %q)\n", addr, err, line)
		return 1
	}
	fmt.Print(line)
	return 0
}

// serveEcho answers each line on ln with the address the connection
// reached and the line.
func serveEcho(t *testing.T, ln net.Listener) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, _ := bufio.NewReader(c).ReadString('\n')
				fmt.Fprintf(c, "%s %s", c.LocalAddr(), line)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
}

// hostsEnv is what the tests of one harness share: the pods, the agent,
// Jaeger and copies of the binaries that other uids can execute.
type hostsEnv struct {
	pods   *testenv.Pods
	consul *testenv.Consul
	jaeger *testenv.Jaeger
	dir    string // readable by every uid
	bin    string // sidemesh, executable by every uid
	client string // this test binary, executable by every uid

	consulOnce   sync.Once
	consulClient *api.Client
}

// readableCopy copies the executable src into dir, mode 0755.
func readableCopy(t *testing.T, src, dir, name string) string {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, name)
	if err := os.WriteFile(dst, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

// injected is what `sidemesh inject` emits for a manifest: the init
// container's arguments and the sidecar container's arguments and uid.
type injected struct {
	InitArgs    []string
	SidecarArgs []string
	SidecarUID  int64
	InitUID     int64
}

// injectManifest runs `bin/sidemesh inject` on a manifest of deploy/kubernetes
// and returns the injected containers of its Deployment, decoded strictly
// with the Kubernetes types.
func injectManifest(t *testing.T, manifest, configMap string) injected {
	t.Helper()
	path := filepath.Join(testenv.RepoRoot(t), "deploy", "kubernetes", manifest)
	out, err := exec.Command(sidemeshBin(t), "inject", "-f", path, "--config-map", configMap).Output()
	if err != nil {
		t.Fatalf("sidemesh inject -f %s: %v", path, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(out))
	for {
		var n yaml.Node
		if err := dec.Decode(&n); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("inject output: %v", err)
		}
		doc, err := yaml.Marshal(&n)
		if err != nil {
			t.Fatal(err)
		}
		var meta struct{ Kind string }
		if err := k8syaml.Unmarshal(doc, &meta); err != nil || meta.Kind != "Deployment" {
			continue
		}
		var d appsv1.Deployment
		if err := k8syaml.UnmarshalStrict(doc, &d); err != nil {
			t.Fatalf("inject output: Deployment: %v", err)
		}
		var inj injected
		var init, side *corev1.Container
		for i, c := range d.Spec.Template.Spec.InitContainers {
			switch c.Name {
			case "sidemesh-init":
				init = &d.Spec.Template.Spec.InitContainers[i]
			case "sidemesh":
				side = &d.Spec.Template.Spec.InitContainers[i]
			}
		}
		if init == nil || side == nil || init.SecurityContext == nil || side.SecurityContext == nil ||
			init.SecurityContext.RunAsUser == nil || side.SecurityContext.RunAsUser == nil {
			t.Fatalf("inject output for %s: no sidemesh-init and sidemesh containers with runAsUser:\n%s", manifest, doc)
		}
		inj.InitArgs, inj.InitUID = init.Args, *init.SecurityContext.RunAsUser
		inj.SidecarArgs, inj.SidecarUID = side.Args, *side.SecurityContext.RunAsUser
		return inj
	}
	t.Fatalf("inject output for %s holds no Deployment:\n%s", manifest, out)
	return injected{}
}

// appServer is an app listening on 127.0.0.1:port in a pod (served by this
// process): it names itself in X-Backend and counts its requests.
type appServer struct {
	name string
	hits atomic.Int64
}

func startApp(t *testing.T, pod *testenv.Pod, port int) *appServer {
	t.Helper()
	ln, err := pod.Listen("tcp", netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(port)).String())
	if err != nil {
		t.Fatalf("app in pod %s: %v", pod.Name, err)
	}
	a := &appServer{name: pod.Name}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.hits.Add(1)
		w.Header().Set("X-Backend", a.name)
		fmt.Fprintf(w, "hello from %s\n", a.name)
	})}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return a
}

// podSidecar is a sidecar running in a pod.
type podSidecar struct {
	*testenv.Process
	pod *testenv.Pod
	hc  *http.Client // dials from inside the pod
}

// startPodSidecar sets a pod up the way Kubernetes runs an injected
// manifest: the init container's arguments as its uid (root), to
// completion, then the sidecar container's arguments as its uid with the
// config at the path its -c names replaced by cfg.
func (e *hostsEnv) startPodSidecar(t *testing.T, pod *testenv.Pod, inj injected, cfg string) *podSidecar {
	t.Helper()
	if inj.InitUID != 0 {
		t.Fatalf("sidemesh-init runs as uid %d, want root", inj.InitUID)
	}
	out, err := pod.Command(t.Context(), e.bin, inj.InitArgs...).CombinedOutput()
	if err != nil {
		t.Fatalf("pod %s: sidemesh %s: %v\n%s", pod.Name, strings.Join(inj.InitArgs, " "), err, out)
	}
	path := filepath.Join(e.dir, pod.Name+".yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	args := slices.Clone(inj.SidecarArgs)
	i := slices.Index(args, "-c")
	if i < 0 || i+1 >= len(args) {
		t.Fatalf("sidecar container args %q: no -c CONFIG", args)
	}
	args[i+1] = path
	uid := int(inj.SidecarUID)
	p := pod.StartProcess(t, "sidemesh-"+pod.Name, testenv.ProcOpts{UID: uid, GID: uid,
		Env: []string{"POD_IP=" + pod.IP.String()}}, e.bin, args...)
	return &podSidecar{Process: p, pod: pod, hc: pod.HTTPClient(t)}
}

// admin GETs an admin path through the pod's loopback (capture leaves
// loopback alone).
func (s *podSidecar) admin(path string) (int, string, error) {
	resp, err := s.hc.Get("http://127.0.0.1:15000" + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

func (s *podSidecar) waitReady(t *testing.T) {
	t.Helper()
	s.WaitReady(30*time.Second, func() error {
		code, body, err := s.admin("/ready")
		if err != nil {
			return err
		}
		if code != 200 {
			return fmt.Errorf("/ready %d: %s", code, body)
		}
		return nil
	})
}

// cluster reads one cluster of the sidecar's /clusters.
func (s *podSidecar) cluster(name string) (ClusterView, error) {
	_, body, err := s.admin("/clusters")
	if err != nil {
		return ClusterView{}, err
	}
	var v struct{ Clusters []ClusterView }
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		return ClusterView{}, fmt.Errorf("/clusters: %v: %s", err, body)
	}
	for _, c := range v.Clusters {
		if c.Name == name {
			return c, nil
		}
	}
	return ClusterView{}, fmt.Errorf("/clusters has no %q: %s", name, body)
}

// runClient runs hostsClient in pod as uid 1000 (an app's uid: its traffic
// is captured) and returns its result.
func (e *hostsEnv) runClient(t *testing.T, pod *testenv.Pod, spec clientSpec) clientResult {
	t.Helper()
	cmd := e.clientCmd(t, pod, spec)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("client in pod %s: %v: %s", pod.Name, err, stderr.String())
	}
	return decodeClientResult(t, stdout.Bytes())
}

func (e *hostsEnv) clientCmd(t *testing.T, pod *testenv.Pod, spec clientSpec) *exec.Cmd {
	t.Helper()
	js, _ := json.Marshal(spec)
	cmd := pod.CommandAs(t.Context(), 1000, 1000, e.client, "-test.run=^$")
	cmd.Env = append(os.Environ(), hostsClientEnv+"="+string(js))
	return cmd
}

func decodeClientResult(t *testing.T, out []byte) clientResult {
	t.Helper()
	var r clientResult
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("client output %q: %v", out, err)
	}
	return r
}

// apiInstances reads /v1/health/service/api from the agent.
func (e *hostsEnv) apiInstances(t *testing.T) ([]*api.ServiceEntry, error) {
	e.consulOnce.Do(func() { e.consulClient = e.consul.Client(t) }) // one pool: the agent limits connections per client
	entries, _, err := e.consulClient.Health().Service("api", "", false, nil)
	return entries, err
}

// apiConfig is an api instance's config: a wildcard inbound and no
// service.address (detected), registered in the agent's pod, traced to
// Jaeger's pod.
func (e *hostsEnv) apiConfig(node string, weight int) string {
	return fmt.Sprintf(`node: %s
service:
  name: api
  port: 8080
  inbound: 0.0.0.0:15006
  weight: %d
  deregister_critical_after: 1m
discovery:
  consul: {address: "%s"}
tracing: {otlp_endpoint: "%s", sampling_ratio: 1.0, batch_timeout: 100ms}
`, node, weight, e.consul.Addr(), e.jaeger.OTLPGRPCAddr())
}

// startAPI runs an api instance in pod: the app, capture, the sidecar; it
// waits until the probe on the pod's address answers 200.
func (e *hostsEnv) startAPI(t *testing.T, pod *testenv.Pod, inj injected, weight int) (*podSidecar, *appServer) {
	t.Helper()
	app := startApp(t, pod, 8080)
	s := e.startPodSidecar(t, pod, inj, e.apiConfig(pod.Name, weight))
	probe := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	s.WaitReady(30*time.Second, func() error {
		resp, err := probe.Get("http://" + pod.Addr(15021) + "/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("probe /ready %d", resp.StatusCode)
		}
		return nil
	})
	return s, app
}

// share is n's part of the counts' total.
func share(counts map[string]int, n string) float64 {
	total := 0
	for _, c := range counts {
		total += c
	}
	if total == 0 {
		return math.NaN()
	}
	return float64(counts[n]) / float64(total)
}

// traceparent makes a sampled W3C traceparent with a fresh trace id (from
// the clock and a counter: unique within a run; Jaeger is this test's own).
var traceSeq atomic.Uint64

func newTraceparent() (header, traceID string) {
	id := fmt.Sprintf("%016x%016x", uint64(time.Now().UnixNano()), traceSeq.Add(1))
	return "00-" + id + "-00f067aa0ba902b7-01", id
}

func hasSpan(spans []testenv.JaegerSpan, service, kind string) bool {
	return slices.ContainsFunc(spans, func(s testenv.JaegerSpan) bool { return s.Service == service && s.Kind() == kind })
}

func TestAcrossHosts(t *testing.T) {
	t.Parallel()
	pods := testenv.NewPods(t)
	pc, pj := pods.Add("consul"), pods.Add("jaeger")
	api1, api2, web, outside := pods.Add("api-1"), pods.Add("api-2"), pods.Add("web"), pods.Add("client")
	e := &hostsEnv{pods: pods, dir: testenv.ReadableTempDir(t)}
	e.bin = readableCopy(t, sidemeshBin(t), e.dir, "sidemesh")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	e.client = readableCopy(t, exe, e.dir, "e2e.test")
	e.consul = testenv.StartConsul(t, testenv.ConsulInPod(pc))
	e.jaeger = testenv.StartJaeger(t, testenv.JaegerInPod(pj))
	apiInj := injectManifest(t, "api.yaml", "sidemesh-api")
	webInj := injectManifest(t, "web.yaml", "sidemesh-web")

	_, app1 := e.startAPI(t, api1, apiInj, 1)
	api2Sidecar, app2 := e.startAPI(t, api2, apiInj, 3)

	t.Run("registered at pod addresses, checks passing from the agent", func(t *testing.T) {
		testenv.Eventually(t, 30*time.Second, "api-1 and api-2 passing in Consul", func() error {
			entries, err := e.apiInstances(t)
			if err != nil {
				return err
			}
			got := map[string]string{}
			for _, en := range entries {
				if st := en.Checks.AggregatedStatus(); st != api.HealthPassing {
					return fmt.Errorf("%s: checks %s: %+v", en.Service.ID, st, en.Checks)
				}
				got[en.Service.ID] = net.JoinHostPort(en.Service.Address, strconv.Itoa(en.Service.Port))
			}
			want := map[string]string{"api-1": api1.Addr(15006), "api-2": api2.Addr(15006)}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				return fmt.Errorf("registered %v, want %v", got, want)
			}
			return nil
		})
	})

	// echo: a TCP service in pod api-1, registered by hand at its IPv4 and
	// (when there is one) IPv6 address, for routing by original destination.
	echoLn, err := api1.Listen("tcp", "[::]:9006")
	if err != nil {
		t.Fatal(err)
	}
	serveEcho(t, echoLn)
	echoAddrs := []netip.Addr{api1.IP}
	if pods.IPv6() {
		echoAddrs = append(echoAddrs, api1.IP6)
	}
	for i, a := range echoAddrs {
		reg := &api.AgentServiceRegistration{ID: "echo-" + strconv.Itoa(i), Name: "echo", Address: a.String(), Port: 9006}
		if err := e.consul.Client(t).Agent().ServiceRegister(reg); err != nil {
			t.Fatalf("register echo at %s: %v", a, err)
		}
	}

	webCfg := fmt.Sprintf(`node: web
discovery:
  consul: {address: "%s"}
transparent: {listen: 127.0.0.1:15001}
upstreams:
  - {service: api, listen: 127.0.0.1:9001}
  - {service: echo, protocol: tcp}
tracing: {otlp_endpoint: "%s", sampling_ratio: 1.0, service_name: web, batch_timeout: 100ms}
`, e.consul.Addr(), e.jaeger.OTLPGRPCAddr())
	webSidecar := e.startPodSidecar(t, web, webInj, webCfg)
	webSidecar.waitReady(t)
	testenv.Eventually(t, 30*time.Second, "web sees both api instances", func() error {
		c, err := webSidecar.cluster("api")
		if err != nil {
			return err
		}
		if len(c.Endpoints) != 2 {
			return fmt.Errorf("endpoints %+v", c.Endpoints)
		}
		return nil
	})

	// The weights, through the explicit listener and through capture (an
	// app that knows only a virtual IP and Host: api), in IPv4 and IPv6.
	paths := []struct{ name, url, host string }{
		{"explicit listener", "http://127.0.0.1:9001/", ""},
		{"capture of a virtual IP", "http://" + pods.VirtualIP(0).String() + ":8080/", "api"},
	}
	if pods.IPv6() {
		paths = append(paths, struct{ name, url, host string }{"capture of an IPv6 virtual IP",
			"http://" + netip.AddrPortFrom(pods.VirtualIP6(0), 8080).String() + "/", "api"})
	} else {
		t.Logf("IPv6 capture not tested: no IPv6 in pods here: %v", pods.NoIPv6)
	}
	for _, p := range paths {
		t.Run("weights 1:3 through the "+p.name, func(t *testing.T) {
			r := e.runClient(t, web, clientSpec{URL: p.url, Host: p.host, N: 2000, Concurrency: 4})
			if r.Failed != 0 || r.Total() != 2000 {
				t.Fatalf("%d of %d failed: %v", r.Failed, r.Total(), r.Errors)
			}
			if s := share(r.Counts, "api-2"); math.Abs(s-0.75) > 0.04 {
				t.Fatalf("api-2 (weight 3) got %.3f of the requests, want 0.75±0.04: %v", s, r.Counts)
			}
			t.Logf("%v", r.Counts)
		})
	}

	t.Run("captured TCP routed by its original destination", func(t *testing.T) {
		// Not HTTP: the transparent listener must read the address the app
		// dialled (SO_ORIGINAL_DST, IPv6: IP6T_SO_ORIGINAL_DST) to find the
		// upstream owning it, which balances the connection over its
		// endpoints; without it the connection is closed.
		for _, a := range echoAddrs {
			dst := netip.AddrPortFrom(a, 9006).String()
			cmd := e.clientCmd(t, web, clientSpec{TCP: dst})
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("TCP to %s from web's app: %v: %s", dst, err, stderr.String())
			}
			// The upstream balances over its endpoints: any of echo's answers.
			reached, rest, _ := strings.Cut(string(out), " ")
			ap, perr := netip.ParseAddrPort(reached)
			if perr != nil || rest != "ping\n" || !slices.Contains(echoAddrs, ap.Addr()) || ap.Port() != 9006 {
				t.Fatalf("TCP to %s: %q, want an echo endpoint's answer (%v, port 9006)", dst, out, echoAddrs)
			}
		}
	})

	t.Run("one trace holds spans of both pods", func(t *testing.T) {
		tp, id := newTraceparent()
		r := e.runClient(t, web, clientSpec{URL: "http://127.0.0.1:9001/", N: 1, Traceparent: tp})
		if r.Failed != 0 {
			t.Fatalf("request failed: %v", r.Errors)
		}
		var spans []testenv.JaegerSpan
		testenv.Eventually(t, testenv.JaegerTraceTimeout, "web's client span and api's server span in Jaeger", func() error {
			var err error
			spans, err = e.jaeger.TraceNow(t.Context(), id)
			if err != nil {
				return err
			}
			if !hasSpan(spans, "web", "client") || !hasSpan(spans, "api", "server") {
				return fmt.Errorf("spans %+v", spans)
			}
			return nil
		})
	})

	t.Run("inbound capture", func(t *testing.T) {
		// A client with no sidecar calls the api pod's app port: capture
		// hands it to the inbound listener, whose server span proves it.
		targets := []string{api1.Addr(8080)}
		if pods.IPv6() {
			targets = append(targets, api1.Addr6(8080))
		}
		hc := outside.HTTPClient(t)
		for _, target := range targets {
			tp, id := newTraceparent()
			req, _ := http.NewRequest("GET", "http://"+target+"/", nil)
			req.Header.Set("traceparent", tp)
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatalf("GET %s from pod client: %v", target, err)
			}
			resp.Body.Close()
			if resp.StatusCode != 200 || resp.Header.Get("X-Backend") != "api-1" {
				t.Fatalf("GET %s: %s from %q", target, resp.Status, resp.Header.Get("X-Backend"))
			}
			spans := e.jaeger.Trace(t, id, 1)
			if !hasSpan(spans, "api", "server") {
				t.Fatalf("GET %s: no server span of api in the trace: %+v", target, spans)
			}
		}
	})

	t.Run("SIGTERM under load: nothing lost, leaves Consul", func(t *testing.T) {
		// api-2 deregisters first, then its inbound keeps serving (with
		// Connection: close) for a grace while web's Consul watch catches
		// up. A request that still meets the closed inbound is refused and
		// retried on api-1 (connect-failure is in the default retry_on; a
		// retry avoids the previous host). At most
		// circuit_breakers.max_retries (3) retries run at once, as in Envoy,
		// so the load keeps 3 requests in flight: each has a retry to spend.
		cmd := e.clientCmd(t, web, clientSpec{URL: "http://127.0.0.1:9001/", Concurrency: 3})
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { stdin.Close(); _ = cmd.Wait() }()
		from2 := app2.hits.Load()
		testenv.Eventually(t, 30*time.Second, "load reaching api-2", func() error {
			if n := app2.hits.Load() - from2; n < 100 {
				return fmt.Errorf("%d requests", n)
			}
			return nil
		})
		if err := api2Sidecar.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code, err := api2Sidecar.Wait(30 * time.Second); err != nil || code != 0 {
			t.Fatalf("api-2's sidecar after SIGTERM: exit %d, %v", code, err)
		}
		testenv.Eventually(t, 30*time.Second, "api-2 gone from Consul", func() error {
			entries, err := e.apiInstances(t)
			if err != nil {
				return err
			}
			for _, en := range entries {
				if en.Service.ID == "api-2" {
					return fmt.Errorf("api-2 still registered")
				}
			}
			return nil
		})
		from1 := app1.hits.Load()
		testenv.Eventually(t, 30*time.Second, "load going on to api-1 after api-2 left", func() error {
			if n := app1.hits.Load() - from1; n < 200 {
				return fmt.Errorf("%d requests", n)
			}
			return nil
		})
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			t.Fatalf("client: %v: %s", err, stderr.String())
		}
		r := decodeClientResult(t, stdout.Bytes())
		if r.Failed != 0 {
			t.Fatalf("%d of %d requests lost while api-2 stopped: %v", r.Failed, r.Total(), r.Errors)
		}
		t.Logf("%d requests, none lost: %v", r.Total(), r.Counts)
	})

	t.Run("SIGKILL: traffic moves away, the entry is reaped", func(t *testing.T) {
		api3 := pods.Add("api-3")
		api3Sidecar, _ := e.startAPI(t, api3, apiInj, 1)
		testenv.Eventually(t, 30*time.Second, "web sees api-3", func() error {
			c, err := webSidecar.cluster("api")
			if err != nil {
				return err
			}
			for _, ep := range c.Endpoints {
				if ep.Address == api3.Addr(15006) && ep.Health == "healthy" {
					return nil
				}
			}
			return fmt.Errorf("endpoints %+v", c.Endpoints)
		})
		api3Sidecar.Stop() // SIGKILL
		// Traffic moves away: the endpoint is ejected (connections refused,
		// outlier detection), or dropped once the agent's check (every 5s)
		// turns critical. Bounded, not timed.
		testenv.Eventually(t, 60*time.Second, "api-3 out of web's rotation", func() error {
			_ = e.runClient(t, web, clientSpec{URL: "http://127.0.0.1:9001/", N: 20, Concurrency: 2})
			c, err := webSidecar.cluster("api")
			if err != nil {
				return err
			}
			for _, ep := range c.Endpoints {
				if ep.Address == api3.Addr(15006) && ep.Health == "healthy" {
					return fmt.Errorf("api-3 still healthy: %+v", ep)
				}
			}
			return nil
		})
		if r := e.runClient(t, web, clientSpec{URL: "http://127.0.0.1:9001/", N: 200, Concurrency: 4}); r.Failed != 0 || r.Total() != 200 {
			t.Fatalf("after api-3 left rotation: %+v", r)
		}
		// Consul reaps the critical entry DeregisterCriticalServiceAfter (1m)
		// after it turned critical; its reaper runs every 30s or so.
		testenv.Eventually(t, 150*time.Second, "api-3 reaped from Consul", func() error {
			entries, err := e.apiInstances(t)
			if err != nil {
				return err
			}
			for _, en := range entries {
				if en.Service.ID == "api-3" {
					return fmt.Errorf("api-3 still registered, checks %s", en.Checks.AggregatedStatus())
				}
			}
			return nil
		})
	})
}

// Bad input: `sidemesh run` exits 1 before binding anything, naming the key.
func TestAcrossHostsBadInput(t *testing.T) {
	t.Parallel()
	pods := testenv.NewPods(t)
	dir := testenv.ReadableTempDir(t)
	bin := sidemeshBin(t)
	agent := pods.Add("consul") // nothing runs there: detection only asks for a route
	consulAddr := agent.Addr(8500)

	probePod, lonely := pods.Add("probe"), pods.Add("lonely")
	// A pod with no route to the agent and no address but loopback.
	for _, args := range [][]string{{"ip", "addr", "flush", "dev", "eth0"}, {"ip", "link", "set", "eth0", "down"}} {
		if out, err := lonely.Command(t.Context(), args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("pod lonely: %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	for _, tc := range []struct {
		name string
		pod  *testenv.Pod
		cfg  string
		want []string
	}{
		{"a probe address that cannot bind", probePod, `node: x
admin: 127.0.0.1:15000
probe: ` + pods.VirtualIP(1).String() + `:15021
service: {name: api, port: 8080, inbound: 0.0.0.0:15006}
discovery: {consul: {address: "` + consulAddr + `"}}
`, []string{"probe", pods.VirtualIP(1).String() + ":15021"}},
		{"an undetectable address", lonely, `node: x
admin: 127.0.0.1:15000
service: {name: api, port: 8080, inbound: 0.0.0.0:15006}
discovery: {consul: {address: "` + consulAddr + `"}}
`, []string{"service.address"}},
		{"an unset variable", pods.Add("unset"), `node: x
admin: 127.0.0.1:15000
service:
  name: api
  port: 8080
  inbound: 0.0.0.0:15006
  address: ${SIDEMESH_E2E_UNSET_POD_IP}
discovery: {consul: {address: "` + consulAddr + `"}}
`, []string{"service.address", "${SIDEMESH_E2E_UNSET_POD_IP}", "line 7"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.pod.Name+".yaml")
			if err := os.WriteFile(path, []byte(tc.cfg), 0o644); err != nil {
				t.Fatal(err)
			}
			// The admin and inbound ports are taken in the pod: a config error
			// found before binding is reported as itself, while a bind would
			// fail on them first ("address already in use").
			if tc.pod != probePod {
				for _, addr := range []string{"127.0.0.1:15000", "0.0.0.0:15006"} {
					ln, err := tc.pod.Listen("tcp", addr)
					if err != nil {
						t.Fatalf("pod %s: %v", tc.pod.Name, err)
					}
					defer ln.Close()
				}
			}
			out, err := tc.pod.Command(t.Context(), bin, "run", "-c", path).CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Fatalf("sidemesh run: %v, want exit 1:\n%s", err, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("output does not name %q:\n%s", w, out)
				}
			}
			if strings.Contains(string(out), "sidecar started") || (tc.pod != probePod && strings.Contains(string(out), "address already in use")) {
				t.Errorf("the sidecar started before failing:\n%s", out)
			}
		})
	}
}
