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

// TestMain lets a test run this binary's main (run) in another process, as
// a container would: with SIDEMESH_TEST_RUN_MAIN=1 the test binary is
// sidemesh with the given arguments.
func TestMain(m *testing.M) {
	if os.Getenv("SIDEMESH_TEST_RUN_MAIN") == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

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
	// The kubelet probes the probe listener (admin stays on loopback), and
	// the pod's address reaches the config as ${POD_IP}.
	for _, probe := range []string{"startupProbe", "readinessProbe"} {
		get := sc[probe].(map[string]any)["httpGet"].(map[string]any)
		if get["port"] != 15021 || get["path"] != "/ready" {
			t.Errorf("%s: %v, want GET /ready on the probe port 15021", probe, get)
		}
	}
	if env := sc["env"].([]any)[0].(map[string]any); env["name"] != "POD_IP" {
		t.Errorf("sidecar env: %v, want POD_IP from the downward API", env)
	}
	// The init container runs the sidecar binary's netlink backend with
	// inbound capture of the app's declared port, needs only NET_ADMIN,
	// and its args are accepted by this binary.
	ic := inits[0].(map[string]any)
	var initArgs []string
	for _, a := range ic["args"].([]any) {
		initArgs = append(initArgs, a.(string))
	}
	if ic["name"] != "sidemesh-init" || ic["command"] != nil || strings.Contains(strings.Join(initArgs, " "), "--backend") {
		t.Fatalf("init container runs something else than the image's sidemesh with the default backend: %v", ic)
	}
	if add := ic["securityContext"].(map[string]any)["capabilities"].(map[string]any)["add"].([]any); len(add) != 1 || add[0] != "NET_ADMIN" {
		t.Fatalf("init container capabilities: %v, want only NET_ADMIN", add)
	}
	var dry, dryErr bytes.Buffer
	if code := run(append(append([]string{}, initArgs...), "--dry-run", "--ipv6", "off"), &dry, &dryErr); code != 0 {
		t.Fatalf("init container args %v: exit %d: %s", initArgs, code, dryErr.String())
	}
	for _, rule := range []string{"meta skuid 1337 return", "meta l4proto tcp redirect to :15001", "tcp dport 8080 redirect to :15006"} {
		if !strings.Contains(dry.String(), rule) {
			t.Errorf("init container args %v: rules lack %q:\n%s", initArgs, rule, dry.String())
		}
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
	code := run([]string{"iptables", "install", "--backend", "iptables", "--ipv6", "off", "--dry-run", "--proxy-port", "15001", "--proxy-uid", "1337", "--inbound-ports", "8080", "--exclude-ports", "15000"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	want := `iptables -t nat -D OUTPUT -p tcp -j SIDEMESH_OUTPUT
iptables -t nat -F SIDEMESH_OUTPUT
iptables -t nat -X SIDEMESH_OUTPUT
iptables -t nat -D PREROUTING -p tcp -j SIDEMESH_INBOUND
iptables -t nat -F SIDEMESH_INBOUND
iptables -t nat -X SIDEMESH_INBOUND
ip6tables -t nat -D OUTPUT -p tcp -j SIDEMESH_OUTPUT
ip6tables -t nat -F SIDEMESH_OUTPUT
ip6tables -t nat -X SIDEMESH_OUTPUT
ip6tables -t nat -D PREROUTING -p tcp -j SIDEMESH_INBOUND
ip6tables -t nat -F SIDEMESH_INBOUND
ip6tables -t nat -X SIDEMESH_INBOUND
iptables -t nat -N SIDEMESH_OUTPUT
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
	for _, c := range []struct {
		args []string
		err  string
	}{
		{[]string{"--inbound-ports", "80,x"}, `--inbound-ports: "x" is not a port`},
		{[]string{"--exclude-cidrs", "198.18.0.0/33"}, `--exclude-cidrs: "198.18.0.0/33" is not a CIDR`},
		{[]string{"--exclude-uids", "-1"}, `--exclude-uids: "-1" is not a numeric uid`},
		{[]string{"--backend", "nft"}, `--backend: "nft" is neither nftables nor iptables`},
		{[]string{"--ipv6", "maybe"}, `--ipv6: "maybe" is not auto, on or off`},
		{[]string{"--inbound-ports", "15006"}, `--inbound-ports: 15006 is the inbound listener's own port`},
		{[]string{"--proxy-port", "70000"}, `--proxy-port: 70000 is not a port`},
	} {
		out.Reset()
		errb.Reset()
		if code := run(append([]string{"iptables", "install", "--dry-run"}, c.args...), &out, &errb); code != 2 || !strings.Contains(errb.String(), c.err) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", c.args, code, errb.String(), c.err)
		}
	}
}

func TestNftablesDryRun(t *testing.T) {
	var out, errb bytes.Buffer
	code := run([]string{"iptables", "install", "--dry-run", "--ipv6", "on", "--inbound-ports", "*", "--exclude-ports", "15021", "--exclude-cidrs", "198.19.0.0/16,2001:2:0:1::/64", "--exclude-uids", "0"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	want := `add table ip sidemesh
delete table ip sidemesh
table ip sidemesh {
	chain output {
		type nat hook output priority dstnat; policy accept;
		meta skuid 1337 return
		meta skuid 0 return
		ip daddr 127.0.0.0/8 return
		ip daddr 198.19.0.0/16 return
		tcp dport 15021 return
		meta l4proto tcp redirect to :15001
	}
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		tcp dport 15006 return
		tcp dport 15001 return
		tcp dport 15021 return
		meta l4proto tcp redirect to :15006
	}
}
add table ip6 sidemesh
delete table ip6 sidemesh
table ip6 sidemesh {
	chain output {
		type nat hook output priority dstnat; policy accept;
		meta skuid 1337 return
		meta skuid 0 return
		ip6 daddr ::1 return
		ip6 daddr 2001:2:0:1::/64 return
		tcp dport 15021 return
		meta l4proto tcp redirect to :15001
	}
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		tcp dport 15006 return
		tcp dport 15001 return
		tcp dport 15021 return
		meta l4proto tcp redirect to :15006
	}
}
`
	if out.String() != want {
		t.Fatalf("rules:\n%s\nwant:\n%s", out.String(), want)
	}
	out.Reset()
	if code := run([]string{"iptables", "remove", "--dry-run"}, &out, &errb); code != 0 || out.String() != "add table ip sidemesh\ndelete table ip sidemesh\nadd table ip6 sidemesh\ndelete table ip6 sidemesh\n" {
		t.Fatalf("remove: exit %d, %q %s", code, out.String(), errb.String())
	}
}

func TestUnknownCommand(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"frobnicate"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), `unknown command "frobnicate"`) {
		t.Fatalf("%d %s", code, errb.String())
	}
}

// --help on every command exits 0 and lists the command's flags on stdout;
// a bad flag exits 2 with the usage on stderr.
func TestHelpOnEveryCommand(t *testing.T) {
	for _, tc := range []struct {
		args  []string
		flags []string
	}{
		{[]string{"run", "--help"}, []string{"-c"}},
		{[]string{"xds", "--help"}, []string{"-c"}},
		{[]string{"demo", "--help"}, []string{"-keep", "-requests", "-lb", "-admin", "-listen"}},
		{[]string{"inject", "-h"}, []string{"-f"}},
		{[]string{"iptables", "--help"}, []string{"-backend", "-proxy-port", "-dry-run"}},
		{[]string{"iptables", "install", "--help"}, []string{"-backend"}},
	} {
		var out, errb strings.Builder
		if code := run(tc.args, &out, &errb); code != 0 {
			t.Errorf("%v: exit %d (stderr %q)", tc.args, code, errb.String())
			continue
		}
		if !strings.HasPrefix(out.String(), "usage: sidemesh "+tc.args[0]) {
			t.Errorf("%v: stdout %q", tc.args, out.String())
		}
		for _, f := range tc.flags {
			if !strings.Contains(out.String(), "  "+f+" ") && !strings.Contains(out.String(), "  "+f+"\n") {
				t.Errorf("%v: usage lacks %s:\n%s", tc.args, f, out.String())
			}
		}
	}
	var out, errb strings.Builder
	if code := run([]string{"run", "--nosuch"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "usage: sidemesh run") {
		t.Errorf("bad flag: exit %d, stderr %q", code, errb.String())
	}
}
