package upstream

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// upstream is the model both the sidecar and xds import: it may import the
// leaf packages that own its sections and the standard library, nothing else.
func TestImports(t *testing.T) {
	allowed := map[string]bool{
		"github.com/sidemesh/sidemesh/sidecar/balancer": true,
		"github.com/sidemesh/sidemesh/sidecar/outlier":  true,
		"github.com/sidemesh/sidemesh/sidecar/breaker":  true,
		"github.com/sidemesh/sidemesh/sidecar/health":   true,
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if strings.Contains(strings.SplitN(path, "/", 2)[0], ".") && !allowed[path] {
				t.Errorf("%s imports %s: upstream may import only the standard library and %v", name, path, allowed)
			}
		}
	}
}
