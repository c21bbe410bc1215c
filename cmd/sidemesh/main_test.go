package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

var update = flag.Bool("update", false, "rewrite golden files")

func TestInjectGolden(t *testing.T) {
	in := filepath.Join("..", "..", "deploy", "kubernetes", "web.yaml")
	var out, errb bytes.Buffer
	if code := run([]string{"inject", "-f", in, "--image", "sidemesh:test"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	golden := filepath.Join("testdata", "web.injected.golden.yaml")
	if *update {
		if err := os.WriteFile(golden, out.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), want) {
		t.Fatalf("inject output differs from %s (run with -update):\n%s", golden, out.String())
	}
	// The sidecar is a native sidecar with a startup probe on /ready.
	var doc map[string]any
	if err := yaml.Unmarshal(out.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	inits := doc["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)["initContainers"].([]any)
	sc := inits[1].(map[string]any)
	if sc["name"] != "sidemesh" || sc["restartPolicy"] != "Always" || sc["startupProbe"] == nil {
		t.Fatalf("sidecar container: %v", sc)
	}
	// Injecting twice changes nothing.
	tmp := filepath.Join(t.TempDir(), "once.yaml")
	_ = os.WriteFile(tmp, out.Bytes(), 0o644)
	var again bytes.Buffer
	if code := run([]string{"inject", "-f", tmp, "--image", "sidemesh:test"}, &again, &errb); code != 0 || !bytes.Equal(again.Bytes(), out.Bytes()) {
		t.Fatalf("inject is not idempotent")
	}
}

func TestInjectErrors(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"inject"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "-f IN.yaml is required") {
		t.Fatalf("no -f: %d %s", code, errb.String())
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	_ = os.WriteFile(bad, []byte("kind: Deployment\nspec: [\n"), 0o644)
	errb.Reset()
	if code := run([]string{"inject", "-f", bad}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "bad.yaml") {
		t.Fatalf("bad yaml: %d %s", code, errb.String())
	}
}

func TestIptablesDryRun(t *testing.T) {
	var out, errb bytes.Buffer
	code := run([]string{"iptables", "install", "--dry-run", "--proxy-port", "15001", "--proxy-uid", "1337", "--inbound-ports", "8080", "--exclude-ports", "15000"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	want := `iptables -t nat -N SIDEMESH_OUTPUT
iptables -t nat -A SIDEMESH_OUTPUT -m owner --uid-owner 1337 -j RETURN
iptables -t nat -A SIDEMESH_OUTPUT -d 127.0.0.0/8 -j RETURN
iptables -t nat -A SIDEMESH_OUTPUT -p tcp --dport 15000 -j RETURN
iptables -t nat -A SIDEMESH_OUTPUT -p tcp -j REDIRECT --to-ports 15001
iptables -t nat -A OUTPUT -p tcp -j SIDEMESH_OUTPUT
iptables -t nat -N SIDEMESH_INBOUND
iptables -t nat -A SIDEMESH_INBOUND -p tcp --dport 8080 -j REDIRECT --to-ports 15006
iptables -t nat -A PREROUTING -p tcp -j SIDEMESH_INBOUND
`
	if out.String() != want {
		t.Fatalf("rules:\n%s\nwant:\n%s", out.String(), want)
	}
	errb.Reset()
	if code := run([]string{"iptables", "install", "--inbound-ports", "80,x"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), `--inbound-ports: "x" is not a port`) {
		t.Fatalf("bad port: %d %s", code, errb.String())
	}
}

func TestUnknownCommand(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"frobnicate"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), `unknown command "frobnicate"`) {
		t.Fatalf("%d %s", code, errb.String())
	}
}
