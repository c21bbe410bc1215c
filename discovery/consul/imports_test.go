package consul

import (
	"go/build"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sidemesh/sidemesh/internal/testenv"
)

// TestImportDirection enforces DESIGN.md's one-way imports: discovery
// sources import neither the data plane (sidecar) nor xds, directly or
// through another sidemesh package.
func TestImportDirection(t *testing.T) {
	const module = "github.com/sidemesh/sidemesh"
	root := testenv.RepoRoot(t)
	forbidden := []string{module + "/sidecar", module + "/xds"}
	seen := map[string]bool{}
	var walk func(pkg string, via []string)
	walk = func(pkg string, via []string) {
		if seen[pkg] {
			return
		}
		seen[pkg] = true
		for _, f := range forbidden {
			if pkg == f || strings.HasPrefix(pkg, f+"/") {
				t.Errorf("%s imports %s (via %v)", via[0], pkg, via)
			}
		}
		p, err := build.ImportDir(filepath.Join(root, strings.TrimPrefix(strings.TrimPrefix(pkg, module), "/")), 0)
		if err != nil {
			t.Fatalf("%s: %v", pkg, err)
		}
		for _, imp := range p.Imports {
			if imp == module || strings.HasPrefix(imp, module+"/") {
				walk(imp, append(via[:len(via):len(via)], imp))
			}
		}
	}
	self := module + "/discovery/consul"
	walk(self, []string{self})
	if !seen[module+"/discovery"] {
		t.Fatal("the walk did not reach package discovery; the test is not looking")
	}
}
