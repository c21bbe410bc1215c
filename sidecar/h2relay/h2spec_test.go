package h2relay

import (
	"encoding/xml"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/sidemesh/sidemesh/internal/testenv"
)

// h2specKnownFailures are the h2spec cases the relay fails, each with the
// reason (README "HTTP/2 and gRPC" would list them too). A failure not
// listed fails TestH2Spec; so does a listed case that passes (drop it).
// Today the relay passes all 146 strict cases.
var h2specKnownFailures = map[string]string{}

// h2specReport is the part of h2spec's JUnit report the test reads.
type h2specReport struct {
	Suites []struct {
		Name  string `xml:"name,attr"`
		Cases []struct {
			Name    string    `xml:"name,attr"`
			Package string    `xml:"package,attr"`
			Failure *struct{} `xml:"failure"`
			Error   *struct{} `xml:"error"`
			Skipped *struct{} `xml:"skipped"`
		} `xml:"testcase"`
	} `xml:"testsuite"`
}

// TestH2Spec runs h2spec (bin/tools/h2spec, built from tools/h2spec) in
// strict mode against the relay in front of an h2c upstream: section 8
// (HTTP message exchanges) must pass in full, and every other failure must
// be a known one.
func TestH2Spec(t *testing.T) {
	bin := testenv.Tool(t, "h2spec", "SIDEMESH_H2SPEC")
	// The upstream: net/http's h2c server answering every request.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	up := &http.Server{Protocols: &p, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, "ok\n")
	})}
	go func() { _ = up.Serve(ln) }()
	t.Cleanup(func() { up.Close() })
	relay, _ := startRelay(t, Config{}, &testHandler{addrs: []string{ln.Addr().String()}})
	_, port, _ := net.SplitHostPort(relay)

	report := filepath.Join(t.TempDir(), "h2spec.xml")
	out, err := exec.Command(bin, "--strict", "-h", "127.0.0.1", "-p", port, "-o", "5", "-j", report).CombinedOutput()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatalf("running h2spec: %v\n%s", err, out)
	}
	raw, rerr := os.ReadFile(report)
	if rerr != nil {
		t.Fatalf("h2spec wrote no report (%v):\n%s", rerr, out)
	}
	var rep h2specReport
	if err := xml.Unmarshal(raw, &rep); err != nil {
		t.Fatalf("h2spec report: %v", err)
	}
	var failed []string
	total, sec8 := 0, 0
	for _, s := range rep.Suites {
		for _, c := range s.Cases {
			total++
			id := c.Package + " " + c.Name
			if strings.HasPrefix(c.Package, "http2/8.") {
				sec8++
			}
			if c.Failure != nil || c.Error != nil {
				failed = append(failed, id)
			}
		}
	}
	sort.Strings(failed)
	if total == 0 || sec8 == 0 {
		t.Fatalf("h2spec ran %d cases (%d of section 8):\n%s", total, sec8, out)
	}
	t.Logf("h2spec --strict: %d cases, %d failed", total, len(failed))
	for i := 0; i < len(failed); i++ {
		// A case that fails once and passes on its own twice in a row is
		// intermittent: logged, not hidden (a case that fails again fails
		// the test). Two such timing races were found this way under heavy
		// load and fixed (a SETTINGS ACK behind the DATA its window
		// released, 6.9.2; a stream ended on the wire but not yet
		// forgotten, 5.1).
		id := failed[i]
		if _, known := h2specKnownFailures[id]; known {
			continue
		}
		pkg := strings.Fields(id)[0]
		if rerunPasses(bin, port, pkg) && rerunPasses(bin, port, pkg) {
			t.Logf("INTERMITTENT h2spec failure: %s failed in the full run and passed twice on its own", id)
			failed = append(failed[:i], failed[i+1:]...)
			i--
		}
	}
	for _, id := range failed {
		why, known := h2specKnownFailures[id]
		switch {
		case strings.HasPrefix(id, "http2/8."):
			t.Errorf("section 8 must pass: %s", id)
		case !known:
			t.Errorf("new h2spec failure: %s", id)
		default:
			t.Logf("known failure: %s (%s)", id, why)
		}
	}
	for id := range h2specKnownFailures {
		if !contains(failed, id) {
			t.Errorf("known failure %q now passes: drop it from the list (and the README)", id)
		}
	}
	if t.Failed() {
		t.Logf("h2spec output:\n%s", out)
	}
}

// rerunPasses runs the h2spec cases of one section again.
func rerunPasses(bin, port, pkg string) bool {
	return exec.Command(bin, "--strict", "-h", "127.0.0.1", "-p", port, "-o", "5", pkg).Run() == nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
