package xds

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// xdsMayImport lists the sidemesh packages xds (and its subpackages) may
// import: discovery, the model of upstream settings and the leaf packages
// that own its sections, never the sidecar itself.
var xdsMayImport = map[string]bool{
	"github.com/sidemesh/sidemesh/discovery":        true,
	"github.com/sidemesh/sidemesh/upstream":         true,
	"github.com/sidemesh/sidemesh/sidecar/balancer": true,
	"github.com/sidemesh/sidemesh/sidecar/outlier":  true,
	"github.com/sidemesh/sidemesh/sidecar/breaker":  true,
	"github.com/sidemesh/sidemesh/sidecar/health":   true,
}

// xds builds on discovery and the upstream model: it must not import the
// data plane.
func TestImportDirection(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	sub, _ := filepath.Glob("*/*.go")
	files = append(files, sub...)
	fset := token.NewFileSet()
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		af, err := parser.ParseFile(fset, f, src, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range af.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if xdsMayImport[path] || strings.HasPrefix(path, "github.com/sidemesh/sidemesh/xds") || strings.HasPrefix(path, "github.com/sidemesh/sidemesh/internal/") {
				continue
			}
			if strings.HasPrefix(path, "github.com/sidemesh/sidemesh/sidecar") || strings.HasPrefix(path, "github.com/sidemesh/sidemesh/cmd") {
				t.Errorf("%s imports %s: xds must not depend on the data plane", f, path)
			}
		}
	}
}
