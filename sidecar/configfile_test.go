package sidecar

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/sidemesh/sidemesh/internal/confyaml"
)

// Key helpers for the README reference check in config_test.go.
func yamlFields(t reflect.Type) map[string]reflect.Type { return confyaml.Fields(t) }

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

var unmarshalerType = reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem()

func parseErr(t *testing.T, doc string, lookup func(string) (string, bool)) error {
	t.Helper()
	_, err := parse("bad.yaml", []byte(doc), lookup)
	if err == nil {
		t.Fatalf("accepted:\n%s", doc)
	}
	if !errors.Is(err, ErrConfig) {
		t.Fatalf("error does not wrap ErrConfig: %v", err)
	}
	return err
}

func noEnv(string) (string, bool) { return "", false }

func TestConfigFileErrorsNameKeyAndLine(t *testing.T) {
	tests := []struct{ name, doc, err string }{
		{"duration without unit", goodBase + "    timeout: 5\n",
			"bad.yaml: config: upstreams[0].timeout: 5 is not a duration; give a unit, e.g. 5s (line 5)"},
		{"duration without unit, not a pointer", goodBase + "    connect_timeout: 2\n",
			"bad.yaml: config: upstreams[0].connect_timeout: 2 is not a duration; give a unit, e.g. 2s (line 5)"},
		{"bad duration", goodBase + "    timeout: soon\n",
			`bad.yaml: config: upstreams[0].timeout: "soon" is not a duration (e.g. 250ms, 5s, 1m30s) (line 5)`},
		{"integer", "service:\n  name: web\n  port: eighty\n",
			`bad.yaml: config: service.port: "eighty" is not an integer (line 3)`},
		{"unsigned", goodBase + "    circuit_breakers:\n      max_requests: -1\n",
			"bad.yaml: config: upstreams[0].circuit_breakers.max_requests: -1 is out of range (0..4294967295) (line 6)"},
		{"number", goodBase + "    healthy_panic_threshold: half\n",
			`bad.yaml: config: upstreams[0].healthy_panic_threshold: "half" is not a number (line 5)`},
		{"list", goodBase + "    hash_policy: {header: x}\n",
			"bad.yaml: config: upstreams[0].hash_policy: must be a list, not a mapping (line 5)"},
		{"mapping", "discovery: {file: ep.yaml}\nupstreams:\n  - api\n",
			`bad.yaml: config: upstreams[0]: must be a mapping, not "api" (line 3)`},
		{"nested type", goodBase + "    retry_policy:\n      retry_back_off: {base_interval: 10}\n",
			"bad.yaml: config: upstreams[0].retry_policy.retry_back_off.base_interval: 10 is not a duration; give a unit, e.g. 10s (line 6)"},
		{"list element", goodBase + "    retry_policy:\n      retriable_status_codes: [503, x]\n",
			`bad.yaml: config: upstreams[0].retry_policy.retriable_status_codes[1]: "x" is not an integer (line 6)`},
		{"self-decoding type", goodBase + "    health_check:\n      http: {path: /h, hots: x}\n",
			"bad.yaml: config: upstreams[0].health_check.http: field hots not found in type health.HTTPCheck (line 6)"},
		{"repeated key", goodBase + "    timeout: 1s\n    timeout: 2s\n",
			"bad.yaml: config: upstreams[0].timeout: key repeats the one on line 5 (line 6)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := parseErr(t, tc.doc, noEnv); err.Error() != tc.err {
				t.Fatalf("error\n  got  %q\n  want %q", err, tc.err)
			}
		})
	}
}

// A syntax error names the file and the line yaml.v3 gives (which for an
// unclosed flow mapping is the line before the one that opened it).
func TestConfigFileSyntaxError(t *testing.T) {
	err := parseErr(t, "upstreams:\n  - {service: api\n", noEnv)
	if !strings.HasPrefix(err.Error(), "bad.yaml: config: did not find expected ',' or '}' (line ") {
		t.Fatalf("error %q", err)
	}
}

func TestConfigFileAnchorsAliasesMergeKeys(t *testing.T) {
	doc := `discovery: {file: ep.yaml}
shared: &defaults
  lb_policy: least_request
  timeout: 3s
  retry_policy: &retries {retry_on: 5xx, num_retries: 3}
upstreams:
  - <<: *defaults
    service: api
    listen: 127.0.0.1:9001
  - <<: *defaults
    service: web
    listen: 127.0.0.1:9002
    timeout: 1s
    retry_policy: *retries
`
	_, err := parse("ok.yaml", []byte(doc), noEnv)
	if err == nil || err.Error() != "ok.yaml: config: shared: unknown key (line 2)" {
		t.Fatalf("an anchor under an unknown key: %v", err)
	}
	// Anchors may sit anywhere the schema allows: here on the first upstream.
	doc = `discovery: {file: ep.yaml}
upstreams:
  - &api
    service: api
    listen: 127.0.0.1:9001
    lb_policy: least_request
    timeout: 3s
    retry_policy: &retries {retry_on: 5xx, num_retries: 3}
  - <<: *api
    service: web
    listen: 127.0.0.1:9002
    timeout: 1s
  - service: db
    listen: 127.0.0.1:9003
    retry_policy: *retries
`
	c, err := parse("ok.yaml", []byte(doc), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	api, web, db := c.Upstreams[0], c.Upstreams[1], c.Upstreams[2]
	if web.Service != "web" || web.LBPolicy != "least_request" || *web.Timeout != time.Second || *web.RetryPolicy.NumRetries != 3 {
		t.Fatalf("merged upstream: %+v", web)
	}
	if *api.Timeout != 3*time.Second || db.RetryPolicy.RetryOn != "5xx" || *db.RetryPolicy.NumRetries != 3 {
		t.Fatalf("aliased values: %+v %+v", api, db)
	}
	// Keys that came in through the merge key count as set by the file.
	if !web.IsSet("lb_policy") || !web.IsSet("retry_policy") || !web.IsSet("timeout") || web.IsSet("connect_timeout") {
		t.Fatalf("IsSet after merge: %v", web.set)
	}
	if !db.IsSet("retry_policy") || db.IsSet("lb_policy") {
		t.Fatalf("IsSet with alias: %v", db.set)
	}
}

// The shape of issue 9's 775-byte file: nine anchors, each merging nine
// aliases of the one before, 9^9 mappings once expanded. It must be refused
// with the bound error; the test binary's timeout catches a hang.
func TestConfigFileAliasBombRefused(t *testing.T) {
	var b strings.Builder
	b.WriteString("discovery: {file: ep.yaml}\nupstreams:\n  - &l0 {service: s0, timeout: 1s}\n")
	for i := 1; i <= 9; i++ {
		refs := strings.TrimSuffix(strings.Repeat(fmt.Sprintf("*l%d, ", i-1), 9), ", ")
		fmt.Fprintf(&b, "  - &l%d {<<: [%s], service: s%d}\n", i, refs, i)
	}
	doc := b.String()
	if len(doc) > 1000 {
		t.Fatalf("the bomb is %d bytes; it should be small", len(doc))
	}
	err := parseErr(t, doc, noEnv)
	want := fmt.Sprintf("document expands to more than %d nodes through aliases (line ", confyaml.DefaultMaxAliasNodes)
	if !strings.HasPrefix(err.Error(), "bad.yaml: config: "+want) {
		t.Fatalf("error %q, want the expansion bound", err)
	}
}

func TestConfigFileVariables(t *testing.T) {
	env := map[string]string{"POD_IP": "198.18.0.7", "PORT": "8080", "EMPTY": ""}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	doc := `node: web-$${HOSTNAME}
service:
  name: ${NAME:-web}
  port: ${PORT}
  inbound: ${POD_IP}:15006
  protocol: ${EMPTY:-http}
discovery: {file: ep.yaml}
upstreams:
  - service: api
    listen: "127.0.0.1:${API_PORT:-9001}"
    timeout: ${TIMEOUT:-2s}
`
	c, err := parse("ok.yaml", []byte(doc), lookup)
	if err != nil {
		t.Fatal(err)
	}
	s := c.Service
	if c.Node != "web-${HOSTNAME}" || s.Name != "web" || s.Port != 8080 || s.Inbound != "198.18.0.7:15006" || s.Protocol != "http" {
		t.Fatalf("expanded: node %q service %+v", c.Node, s)
	}
	if u := c.Upstreams[0]; u.Listen != "127.0.0.1:9001" || *u.Timeout != 2*time.Second {
		t.Fatalf("expanded upstream: %+v", u)
	}

	bad := []struct{ doc, err string }{
		{"service:\n  name: web\n  port: 8080\n  inbound: ${POD_ADDR}:15006\n",
			"bad.yaml: config: service.inbound: ${POD_ADDR} is not set and has no default (line 4)"},
		{"service:\n  name: web\n  port: ${NAME:-web}\n",
			`bad.yaml: config: service.port: "web" is not an integer (line 3)`},
		{goodBase + "    timeout: ${PORT}\n",
			"bad.yaml: config: upstreams[0].timeout: 8080 is not a duration; give a unit, e.g. 8080s (line 5)"},
		{"admin: ${ADMIN\n", "bad.yaml: config: admin: ${ADMIN has no closing } (write $$ for a literal $) (line 1)"},
	}
	for _, tc := range bad {
		if err := parseErr(t, tc.doc, lookup); err.Error() != tc.err {
			t.Errorf("error\n  got  %q\n  want %q", err, tc.err)
		}
	}
}

// Parse reads the process environment.
func TestParseExpandsFromEnvironment(t *testing.T) {
	t.Setenv("SIDEMESH_TEST_ADMIN_PORT", "15999")
	c, err := Parse("ok.yaml", []byte("admin: 127.0.0.1:${SIDEMESH_TEST_ADMIN_PORT}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Admin.Address != "127.0.0.1:15999" {
		t.Fatalf("admin %q", c.Admin.Address)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(goodBase))
	f.Add([]byte(goodBase + "    timeout: 5\n"))
	f.Add([]byte("service: {name: web, port: 8080, inbound: 0.0.0.0:15006}\ndiscovery: {file: ep.yaml}\n"))
	f.Add([]byte("discovery: {file: ep.yaml}\nupstreams:\n  - &a {service: api, lb_policy: maglev}\n  - <<: *a\n    service: web\n"))
	f.Add([]byte("upstreams: &u [*u]\n"))
	f.Add([]byte("admin: ${ADDR:-127.0.0.1:1}\nlog_level: $$x\n"))
	f.Add([]byte("discovery:\n  consul: {address: 127.0.0.1:8500}\nupstreams:\n  - service: api\n    outlier_detection: {consecutive_5xx: 3}\n    health_check: {http: /healthz, interval: 1s}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := parse("f.yaml", data, noEnv)
		if err != nil {
			if !errors.Is(err, ErrConfig) || !strings.HasPrefix(err.Error(), "f.yaml: ") && !strings.HasPrefix(err.Error(), "config: f.yaml: ") {
				t.Fatalf("error without ErrConfig or the file name: %v", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("accepted config no longer validates: %v", err)
		}
	})
}
