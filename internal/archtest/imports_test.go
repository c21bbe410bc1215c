package archtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/sidemesh/sidemesh/internal/testenv"
)

const module = "github.com/sidemesh/sidemesh"

// Patterns name packages: "std" is any standard library package, "module"
// any package of this module, "external" any package outside the standard
// library and this module, a path ending in "/..." a package and everything
// below it. A path of this module is written relative to the module root
// ("sidecar/balancer").

// rule is one import direction rule for the packages matching pkgs (their
// non-test code):
//   - only: every direct import matches one of these patterns;
//   - never: no dependency, direct or through other packages, matches one
//     of these patterns.
type rule struct {
	pkgs   string
	only   []string
	never  []string
	reason string
}

// the four building blocks every upstream model may use.
var upstreamParts = []string{"sidecar/balancer", "sidecar/outlier", "sidecar/breaker", "sidecar/health"}

var rules = []rule{
	{
		pkgs:   "discovery/...",
		never:  []string{"sidecar/...", "xds/..."},
		reason: "discovery sources feed both the data plane and the xDS server, so they depend on neither",
	},
	{
		pkgs:   "sidecar/balancer",
		only:   []string{"std", "github.com/cespare/xxhash/v2"},
		reason: "load-balancing policies see endpoints only, never connections, proxies, discovery or config loading",
	},
	{
		pkgs:   "tracing",
		never:  []string{"module"},
		reason: "the proxy imports tracing, so tracing is a leaf of the module",
	},
	{
		pkgs:   "upstream",
		only:   append([]string{"std", "gopkg.in/yaml.v3"}, upstreamParts...),
		reason: "the one model of upstream settings is shared by xds and sidecar, so it may build only on the policy packages",
	},
	{
		pkgs:   "mtls",
		only:   []string{"std", "github.com/spiffe/go-spiffe/v2/..."},
		reason: "the mesh identity (certificates, SPIFFE verification, intentions) is fed by discovery sources and used by the data plane, so it depends on neither",
	},
	{
		pkgs:   "bench/internal/measure",
		only:   []string{"std"},
		reason: "the load generators' shared measurement code stays on the standard library, so it adds nothing of the module's to the generators' cost and measures every proxy from outside alike",
	},
	{
		pkgs:   "sidecar/h2relay",
		only:   []string{"std", "golang.org/x/net/http2", "golang.org/x/net/http2/hpack", "golang.org/x/net/http/httpguts"},
		reason: "the HTTP/2 engine speaks the protocol only; endpoint choice, retries, policy and telemetry are the sidecar's, asked through its Handler",
	},
	{
		pkgs:   "xds/...",
		only:   append([]string{"std", "external", "upstream", "discovery/...", "xds/..."}, upstreamParts...),
		never:  []string{"sidecar"},
		reason: "the xDS server and client translate the upstream model and discovery state; they never depend on the data plane",
	},
}

// pkg is what the rules need of `go list -json` output.
type pkg struct {
	ImportPath string
	Standard   bool
	Imports    []string
	Deps       []string
	Error      *struct{ Err string }
}

// graph maps an import path to its package.
type graph map[string]*pkg

// loadGraph lists every package of the module and everything they depend
// on.
func loadGraph(t *testing.T) graph {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", "-json=ImportPath,Standard,Imports,Deps,Error", "./...")
	cmd.Dir = testenv.RepoRoot(t)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.Bytes())
	}
	g := graph{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		p := new(pkg)
		if err := dec.Decode(p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("go list output: %v", err)
		}
		if p.Error != nil {
			t.Fatalf("go list: %s: %s", p.ImportPath, p.Error.Err)
		}
		g[p.ImportPath] = p
	}
	return g
}

// matches reports whether the package path (in g) matches pattern.
func (g graph) matches(path, pattern string) bool {
	switch pattern {
	case "std":
		p := g[path]
		return p != nil && p.Standard
	case "module":
		return path == module || strings.HasPrefix(path, module+"/")
	case "external":
		p := g[path]
		return p != nil && !p.Standard && path != module && !strings.HasPrefix(path, module+"/")
	}
	full := pattern
	if !strings.Contains(strings.SplitN(pattern, "/", 2)[0], ".") {
		full = module + "/" + pattern // a path of this module
	}
	if prefix, ok := strings.CutSuffix(full, "/..."); ok {
		return path == prefix || strings.HasPrefix(path, prefix+"/")
	}
	return path == full
}

// check returns the packages rule r applies to in g, and its violations.
func (g graph) check(r rule) (checked []string, violations []string) {
	for _, path := range slices.Sorted(maps.Keys(g)) {
		if !g.matches(path, r.pkgs) || !strings.HasPrefix(path, module+"/") {
			continue
		}
		checked = append(checked, path)
		p := g[path]
		for _, imp := range p.Imports {
			if len(r.only) > 0 && !slices.ContainsFunc(r.only, func(pat string) bool { return g.matches(imp, pat) }) {
				violations = append(violations, fmt.Sprintf("%s imports %s; it may import only %v", path, imp, r.only))
			}
		}
		for _, dep := range p.Deps {
			for _, pat := range r.never {
				if g.matches(dep, pat) {
					violations = append(violations, fmt.Sprintf("%s depends on %s (%s); it must never depend on %s", path, dep, strings.Join(g.chain(path, dep), " → "), pat))
				}
			}
		}
	}
	return checked, violations
}

// chain returns an import chain from one package to another it depends on.
func (g graph) chain(from, to string) []string {
	prev := map[string]string{from: ""}
	queue := []string{from}
	for len(queue) > 0 {
		cur := queue[0]
		queue = queue[1:]
		if cur == to {
			var path []string
			for p := to; p != ""; p = prev[p] {
				path = append(path, strings.TrimPrefix(p, module+"/"))
			}
			slices.Reverse(path)
			return path
		}
		if p := g[cur]; p != nil {
			for _, imp := range p.Imports {
				if _, seen := prev[imp]; !seen {
					prev[imp] = cur
					queue = append(queue, imp)
				}
			}
		}
	}
	return []string{from, "?", to}
}

// TestImportDirection checks every rule against the module as it is.
func TestImportDirection(t *testing.T) {
	g := loadGraph(t)
	for _, r := range rules {
		t.Run(strings.ReplaceAll(r.pkgs, "/", "_"), func(t *testing.T) {
			checked, violations := g.check(r)
			if len(checked) == 0 {
				t.Logf("no package matches %s yet: nothing to check", r.pkgs)
				return
			}
			for _, v := range violations {
				t.Errorf("%s: %s", v, r.reason)
			}
		})
	}
}

// TestRulesCatchViolations runs the rules over a made-up module that breaks
// each of them, directly and through another package, so a rule that
// cannot fail does not go unnoticed.
func TestRulesCatchViolations(t *testing.T) {
	m := func(p string) string { return module + "/" + p }
	g := graph{}
	add := func(path string, std bool, imports ...string) {
		g[path] = &pkg{ImportPath: path, Standard: std, Imports: imports}
	}
	add("fmt", true)
	add("net/http", true)
	add("net", true)
	add("golang.org/x/net/http2", false)
	add("github.com/cespare/xxhash/v2", false)
	add("github.com/other/lib", false)
	add("gopkg.in/yaml.v3", false)
	add(m("sidecar"), false, m("sidecar/balancer"))
	add(m("sidecar/balancer"), false, "fmt", "github.com/cespare/xxhash/v2", "github.com/other/lib")
	add(m("sidecar/health"), false, "net/http")
	add(m("internal/glue"), false, m("sidecar"))
	add(m("discovery"), false, "fmt")
	add(m("discovery/file"), false, m("discovery"), m("internal/glue"))
	add(m("tracing"), false, "net/http", m("internal/glue"))
	add(m("upstream"), false, "gopkg.in/yaml.v3", m("sidecar/health"), "github.com/other/lib")
	add("github.com/spiffe/go-spiffe/v2/spiffeid", false)
	add(m("mtls"), false, "fmt", "github.com/spiffe/go-spiffe/v2/spiffeid", m("discovery"))
	add(m("bench/internal/measure"), false, "fmt", "github.com/other/lib")
	add(m("sidecar/h2relay"), false, "net", "golang.org/x/net/http2", m("sidecar/balancer"))
	add(m("xds"), false, "github.com/other/lib", m("upstream"), m("discovery"), m("sidecar/health"), m("internal/glue"))
	// Deps: the transitive closure, as go list reports it.
	for _, p := range g {
		seen := map[string]bool{}
		var walk func(string)
		walk = func(path string) {
			for _, imp := range g[path].Imports {
				if !seen[imp] {
					seen[imp] = true
					walk(imp)
				}
			}
		}
		walk(p.ImportPath)
		p.Deps = slices.Sorted(maps.Keys(seen))
	}

	want := map[string][]string{
		"discovery/...": {
			m("discovery/file") + " depends on " + m("sidecar") + " (discovery/file → internal/glue → sidecar)",
			m("discovery/file") + " depends on " + m("sidecar/balancer") + " (discovery/file → internal/glue → sidecar → sidecar/balancer)",
		},
		"sidecar/balancer": {m("sidecar/balancer") + " imports github.com/other/lib"},
		"tracing": {
			m("tracing") + " depends on " + m("internal/glue"),
			m("tracing") + " depends on " + m("sidecar") + " ",
			m("tracing") + " depends on " + m("sidecar/balancer"),
		},
		"mtls":            {m("mtls") + " imports " + m("discovery")},
		"sidecar/h2relay": {m("sidecar/h2relay") + " imports " + m("sidecar/balancer")},
		"upstream":        {m("upstream") + " imports github.com/other/lib"},
		"xds/...":         {m("xds") + " imports " + m("internal/glue"), m("xds") + " depends on " + m("sidecar") + " (xds → internal/glue → sidecar)"},

		"bench/internal/measure": {m("bench/internal/measure") + " imports github.com/other/lib"},
	}
	for _, r := range rules {
		_, got := g.check(r)
		w, ok := want[r.pkgs]
		if !ok {
			t.Errorf("rule %s: no made-up violation for it; add one here", r.pkgs)
			continue
		}
		if len(got) != len(w) {
			t.Errorf("rule %s: %d violations, want %d:\n%s", r.pkgs, len(got), len(w), strings.Join(got, "\n"))
			continue
		}
		for i := range w {
			if !strings.HasPrefix(got[i], w[i]) {
				t.Errorf("rule %s: violation %q, want it to start with %q", r.pkgs, got[i], w[i])
			}
		}
	}
}
