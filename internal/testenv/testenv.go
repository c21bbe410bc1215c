package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// modulePath is the module whose root RepoRoot looks for.
const modulePath = "github.com/sidemesh/sidemesh"

// RepoRoot returns the directory holding the sidemesh go.mod, found by
// walking up from the working directory (a test runs in its package's
// directory).
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(data, []byte("module "+modulePath+"\n")) {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("testenv: no go.mod of module %s above the working directory", modulePath)
		}
		dir = parent
	}
}

// RequireToolsEnv names the environment variable that turns a missing tool
// or privilege from a skip into a failure (`make test` and CI set it).
const RequireToolsEnv = "SIDEMESH_REQUIRE_TOOLS"

// ToolsRequired reports whether $SIDEMESH_REQUIRE_TOOLS is set to anything
// but "" or "0".
func ToolsRequired() bool {
	v := os.Getenv(RequireToolsEnv)
	return v != "" && v != "0"
}

// RequireOrSkip ends a test that cannot run here: reason says which tool,
// privilege or kernel feature is missing. It skips with that reason, or
// fails with it when ToolsRequired, so a run that requires the tools never
// passes by skipping. Call it for missing prerequisites only, never for a
// condition the test itself should handle.
func RequireOrSkip(t testing.TB, reason string) {
	t.Helper()
	if ToolsRequired() {
		t.Fatalf("%s (%s is set, so this is a failure, not a skip)", reason, RequireToolsEnv)
	}
	t.Skip("skipped: " + reason)
}

// Tool returns the path of a tool binary: $envVar when set, else
// bin/tools/<name> under the module root. A missing binary goes to
// RequireOrSkip.
func Tool(t testing.TB, name, envVar string) string {
	t.Helper()
	path := os.Getenv(envVar)
	if path == "" {
		path = filepath.Join(RepoRoot(t), "bin", "tools", name)
	}
	if fi, err := os.Stat(path); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		RequireOrSkip(t, fmt.Sprintf("testenv: %s binary not found at %s (run `make tools`, or set %s)", name, path, envVar))
	}
	return path
}

// FreePorts returns n distinct ports on 127.0.0.1, free for TCP and UDP.
// The sockets are held until all n are chosen, then closed, so the ports
// are free (but not reserved) when it returns.
//
// The ports are taken at random below the kernel's ephemeral range
// (ip_local_port_range) when there is room there. A port the kernel hands
// out to a listen on port 0 or to an outgoing connection, in this or any
// other test process, could otherwise be taken between FreePorts returning
// and the caller binding it, or while a test keeps a server down to
// restart it on the same port (Consul.Restart). Below that range only
// another explicit bind can take it.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	lo, hi, fixed := belowEphemeral()
	ports := make([]int, 0, n)
	for range n {
		p := 0
		for try := 0; fixed && p == 0 && try < 1000; try++ {
			c := lo + rand.IntN(hi-lo)
			if slices.Contains(ports, c) {
				continue
			}
			ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(c)))
			if err != nil {
				continue
			}
			defer ln.Close()
			pc, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(c)))
			if err != nil {
				continue
			}
			defer pc.Close()
			p = c
		}
		if p == 0 { // no room below the ephemeral range: the kernel's choice
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatalf("testenv: free port: %v", err)
			}
			defer ln.Close()
			p = ln.Addr().(*net.TCPAddr).Port
		}
		ports = append(ports, p)
	}
	return ports
}

// fixedPortsLow is the lowest port FreePorts picks below the ephemeral range.
const fixedPortsLow = 10000

// belowEphemeral returns [lo, hi), the ports FreePorts picks from: from
// fixedPortsLow up to the start of the ephemeral range, if that leaves at
// least 1000 ports (ok false otherwise, or when the range is unknown).
func belowEphemeral() (lo, hi int, ok bool) {
	data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0, false
	}
	f := strings.Fields(string(data))
	if len(f) != 2 {
		return 0, 0, false
	}
	first, err := strconv.Atoi(f[0])
	if err != nil || first-fixedPortsLow < 1000 {
		return 0, 0, false
	}
	return fixedPortsLow, first, true
}

// Eventually polls cond every 20ms until it returns nil, and fails the test
// with what and cond's last error when timeout passes first.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	if err := Poll(timeout, cond); err != nil {
		t.Fatalf("testenv: %s: not within %v: %v", what, timeout, err)
	}
}

// Poll calls cond every 20ms until it returns nil (then Poll returns nil) or
// timeout passes (then Poll returns cond's last error).
func Poll(timeout time.Duration, cond func() error) error {
	return pollUntil(context.Background(), timeout, cond)
}

// pollUntil is Poll that also gives up, with cond's last error, once ctx is
// done.
func pollUntil(ctx context.Context, timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Process is a child process whose output goes to a log file in a test
// temp directory; the log's tail is printed if the test fails. It is killed
// when the test ends.
type Process struct {
	t    testing.TB
	name string
	path string
	args []string
	env  []string // added to the test's environment; nil: inherit it
	log  string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// StartProcess starts path with args. name labels the log.
func StartProcess(t testing.TB, name, path string, args ...string) *Process {
	t.Helper()
	return startProcess(t, name, nil, path, args...)
}

// startProcess is StartProcess with env (KEY=VALUE) added to the child's
// environment.
func startProcess(t testing.TB, name string, env []string, path string, args ...string) *Process {
	t.Helper()
	p := &Process{t: t, name: name, path: path, args: args, env: env, log: filepath.Join(t.TempDir(), name+".log")}
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			p.dumpLog()
		}
	})
	if err := p.Start(); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return p
}

// LogPath is the file the process writes its output to (appended across restarts).
func (p *Process) LogPath() string { return p.log }

// Start starts the process again after Stop. It is an error to start a
// running process.
func (p *Process) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return fmt.Errorf("%s is already running", p.name)
	}
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(p.path, p.args...)
	if p.env != nil {
		cmd.Env = append(os.Environ(), p.env...)
	}
	cmd.Stdout, cmd.Stderr = f, f
	setDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(done)
	}()
	p.cmd, p.done = cmd, done
	return nil
}

// Stop kills the process (SIGKILL: a crash, as an outage test wants) and
// waits for it to exit. Stopping a stopped process does nothing.
func (p *Process) Stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	p.cmd, p.done = nil, nil
}

// Exited reports whether the process has exited on its own.
func (p *Process) Exited() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done == nil {
		return false
	}
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// exitedCtx returns a context cancelled when the running process exits, so
// a wait can give up early.
func (p *Process) exitedCtx() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	if done == nil {
		cancel()
		return ctx, cancel
	}
	go func() {
		select {
		case <-done:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// errExited is what WaitReady reports when the process died while waited on.
var errExited = errors.New("process exited")

// WaitReady polls ready until it returns nil, the process exits, or timeout
// passes; the test fails in the latter two cases (and the log is printed
// when the test ends).
func (p *Process) WaitReady(timeout time.Duration, ready func() error) {
	p.t.Helper()
	ctx, cancel := p.exitedCtx()
	defer cancel()
	err := pollUntil(ctx, timeout, func() error {
		if ctx.Err() != nil {
			return errExited
		}
		return ready()
	})
	if err != nil {
		p.t.Fatalf("testenv: %s not ready within %v: %v", p.name, timeout, err)
	}
}

func (p *Process) dumpLog() {
	data, err := os.ReadFile(p.log)
	if err != nil {
		p.t.Logf("testenv: %s log: %v", p.name, err)
		return
	}
	const tail = 8 << 10
	if len(data) > tail {
		data = data[len(data)-tail:]
	}
	p.t.Logf("testenv: %s log (%s, last %d bytes):\n%s", p.name, p.log, len(data), data)
}

// Signal sends sig to the running process (e.g. SIGTERM for a graceful
// stop); it is an error if the process is not running.
func (p *Process) Signal(sig os.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return fmt.Errorf("%s is not running", p.name)
	}
	return p.cmd.Process.Signal(sig)
}

// Wait waits up to timeout for the process to exit on its own and returns
// its exit code; on timeout it kills the process and returns an error.
func (p *Process) Wait(timeout time.Duration) (int, error) {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return 0, fmt.Errorf("%s is not running", p.name)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		p.Stop()
		return -1, fmt.Errorf("%s did not exit within %v", p.name, timeout)
	}
	p.mu.Lock()
	p.cmd, p.done = nil, nil
	p.mu.Unlock()
	return cmd.ProcessState.ExitCode(), nil
}

// Log returns what the process has written so far.
func (p *Process) Log() string {
	data, _ := os.ReadFile(p.log)
	return string(data)
}
