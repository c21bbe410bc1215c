package discovery

import (
	"os/exec"
	"strings"
	"testing"
)

// The import direction is one way (DESIGN.md): discovery and its sources
// never import the data plane (sidecar) or the xDS package.
func TestImportDirection(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "./...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.HasPrefix(dep, "github.com/sidemesh/sidemesh/sidecar") || strings.HasPrefix(dep, "github.com/sidemesh/sidemesh/xds") {
			t.Errorf("discovery depends on %s", dep)
		}
	}
}
