package sidecar

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

const goodBase = "discovery: {file: ep.yaml}\nupstreams:\n  - service: api\n    listen: 127.0.0.1:9001\n"

func TestBadConfigs(t *testing.T) {
	tests := []struct{ name, doc, err string }{
		{"unknown top key", "nodes: x\n", "bad.yaml: config: nodes: unknown key (line 1)"},
		{"unknown upstream key", goodBase + "    lb_polcy: maglev\n", "bad.yaml: config: upstreams[0].lb_polcy: unknown key (line 5)"},
		{"unknown nested key", goodBase + "    outlier_detection: {consecutive5xx: 3}\n", "bad.yaml: config: upstreams[0].outlier_detection.consecutive5xx: unknown key (line 5)"},
		{"bad policy", goodBase + "    lb_policy: fastest\n", `bad.yaml: config: upstreams[0].lb_policy: "fastest" must be one of weighted_random, round_robin, least_request, ring_hash, maglev`},
		{"bad protocol", goodBase + "    protocol: udp\n", `bad.yaml: config: upstreams[0].protocol: "udp" must be one of http, grpc, tcp`},
		{"bad listen", "discovery: {file: ep.yaml}\nupstreams:\n  - {service: api, listen: nowhere}\n", `bad.yaml: config: upstreams[0].listen: "nowhere" is not host:port`},
		{"negative connect timeout", goodBase + "    connect_timeout: -1s\n", `bad.yaml: config: upstreams[0].connect_timeout: "-1s" must be > 0`},
		{"bad duration", goodBase + "    timeout: soon\n", `bad.yaml: config: upstreams[0].timeout: "soon" is not a duration`},
		{"bad retry_on", goodBase + "    retry_policy: {retry_on: \"5xx,sometimes\"}\n", `bad.yaml: config: upstreams[0].retry_policy.retry_on: "sometimes" is not a retry condition`},
		{"too many retries", goodBase + "    retry_policy: {num_retries: 11}\n", `bad.yaml: config: upstreams[0].retry_policy.num_retries: 11 must be in 0..10`},
		{"panic threshold", goodBase + "    healthy_panic_threshold: 150\n", `bad.yaml: config: upstreams[0].healthy_panic_threshold: 150 must be a percentage in 0..100`},
		{"duplicate service", goodBase + "  - {service: api, listen: 127.0.0.1:9002}\n", `bad.yaml: config: upstreams[1].service: "api" repeats upstreams[0].service`},
		{"duplicate listen", goodBase + "  - {service: web, listen: 127.0.0.1:9001}\n", `bad.yaml: config: upstreams[1].listen: "127.0.0.1:9001" is already used by upstreams[0].listen`},
		{"two sources", "discovery: {file: a, xds: {address: 127.0.0.1:1}}\n", "bad.yaml: config: discovery: set exactly one of consul, xds, file (found 2)"},
		{"no source", "upstreams:\n  - {service: api}\n", "bad.yaml: config: discovery: upstreams need a source: set one of consul, xds, file"},
		{"empty service", "discovery: {file: x}\nupstreams:\n  - {listen: 127.0.0.1:1}\n", `bad.yaml: config: upstreams[0].service: "" must not be empty`},
		{"service port", "service: {name: web, port: 70000}\n", `bad.yaml: config: service.port: 70000 must be a port in 1..65535`},
		{"service weight", "service: {name: web, port: 8080, weight: 500}\n", `bad.yaml: config: service.weight: 500 must be in 1..128 (Consul's range)`},
		{"hash policy", goodBase + "    hash_policy: [{}]\n", "bad.yaml: config: upstreams[0].hash_policy[0]: set exactly one of header, source_ip"},
		{"failover with file discovery", goodBase + "    failover: {datacenters: [dc2]}\n",
			"bad.yaml: config: upstreams[0].failover: needs discovery.consul (failover datacenters are Consul's; with file or xds discovery, give endpoints a priority)"},
		{"failover with xds discovery", "discovery: {xds: {address: 127.0.0.1:1}}\nupstreams:\n  - {service: api, failover: {datacenters: [dc2]}}\n",
			"bad.yaml: config: upstreams[0].failover: needs discovery.consul"},
		{"failover datacenter name", "discovery: {consul: {}}\nupstreams:\n  - {service: api, failover: {datacenters: [dc2, \"dc/3\"]}}\n",
			`bad.yaml: config: upstreams[0].failover.datacenters[1]: "dc/3" is not a datacenter name (letters, digits, - and _)`},
		{"zone_aware without a zone", goodBase + "    zone_aware: true\n", "bad.yaml: config: upstreams[0].zone_aware: true needs the sidecar's zone: set zone"},
		{"zone_aware min size", goodBase + "    zone_aware_min_cluster_size: -2\n", "bad.yaml: config: upstreams[0].zone_aware_min_cluster_size: -2 must be >= 0"},
		{"log level", "log_level: loud\n", `bad.yaml: config: log_level: "loud" must be one of debug, info, warn, error`},
		{"admin", "admin: 15000\n", `bad.yaml: config: admin: "15000" is not host:port`},
		{"retry_on lists every condition", goodBase + "    retry_policy: {retry_on: \"5xx,sometimes\"}\n",
			`bad.yaml: config: upstreams[0].retry_policy.retry_on: "sometimes" is not a retry condition (5xx, gateway-error, reset, connect-failure, retriable-4xx, refused-stream, retriable-status-codes, cancelled, deadline-exceeded, unavailable, resource-exhausted, internal)`},
		{"tcp idle timeout", goodBase + "    tcp_idle_timeout: -1s\n", `bad.yaml: config: upstreams[0].tcp_idle_timeout: "-1s" must be >= 0 (0 disables it)`},
		{"maglev table size has no key", goodBase + "    maglev_lb_config: {table_size: 7}\n", "bad.yaml: config: upstreams[0].maglev_lb_config: unknown key (line 5)"},
		{"slow start", goodBase + "    slow_start: {slow_start_window: 0s}\n", `bad.yaml: config: upstreams[0].slow_start.slow_start_window: "0s" must be > 0`},
		{"empty", "", "bad.yaml: empty file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("bad.yaml", []byte(tc.doc))
			if err == nil {
				t.Fatalf("accepted; want error %q", tc.err)
			}
			if !strings.HasPrefix(err.Error(), tc.err) && !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("error\n  got  %q\n  want %q", err.Error(), tc.err)
			}
			if !errors.Is(err, ErrConfig) && !strings.Contains(tc.err, "config:") {
				// yaml type errors are wrapped too
				if !errors.Is(err, ErrConfig) {
					t.Fatalf("error does not wrap ErrConfig: %v", err)
				}
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	c, err := Parse("ok.yaml", []byte(goodBase))
	if err != nil {
		t.Fatal(err)
	}
	u := c.Upstreams[0]
	if u.Protocol != "http" || u.LBPolicy != "round_robin" || u.ConnectTimeout.String() != "5s" || u.Timeout.String() != "15s" {
		t.Fatalf("defaults: %+v", u)
	}
	if u.RetryPolicy.RetryOn != "connect-failure,refused-stream" || *u.RetryPolicy.NumRetries != 2 {
		t.Fatalf("default retry policy: %+v", u.RetryPolicy)
	}
	c, err = Parse("ok.yaml", []byte(goodBase+"    retry_policy: {retry_on: 5xx}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if *c.Upstreams[0].RetryPolicy.NumRetries != 1 {
		t.Fatalf("retry_policy without num_retries should get Envoy's 1")
	}
	if c.Admin.Address != "127.0.0.1:15000" || *c.Upstreams[0].HealthyPanicThreshold != 50 {
		t.Fatalf("admin %q panic %v", c.Admin.Address, *c.Upstreams[0].HealthyPanicThreshold)
	}
	if !c.Upstreams[0].IsSet("retry_policy") || c.Upstreams[0].IsSet("lb_policy") {
		t.Fatal("IsSet does not track file keys")
	}
	if d := c.Upstreams[0].TCPIdleTimeout; d == nil || *d != time.Hour {
		t.Fatalf("tcp_idle_timeout %v, want Envoy's 1h", d)
	}
	c, err = Parse("ok.yaml", []byte(goodBase+"    tcp_idle_timeout: 0s\n"))
	if err != nil {
		t.Fatal(err)
	}
	if d := c.Upstreams[0].TCPIdleTimeout; d == nil || *d != 0 || !c.Upstreams[0].IsSet("tcp_idle_timeout") {
		t.Fatalf("tcp_idle_timeout: 0s gave %v, want 0 (disabled) and set", d)
	}
}

func TestDesignExampleParses(t *testing.T) {
	doc := `
node: web-1
admin: 127.0.0.1:15000
service:
  name: web
  port: 8080
  inbound: 0.0.0.0:15006
  weight: 10
  health_check: {http: /healthz, interval: 5s}
discovery:
  file: endpoints.yaml
xds_server: {listen: 127.0.0.1:18000}
transparent: {listen: 127.0.0.1:15001}
upstreams:
  - service: api
    listen: 127.0.0.1:9001
    protocol: http
    lb_policy: weighted_random
    connect_timeout: 1s
    timeout: 15s
    retry_policy: {retry_on: "5xx,reset,connect-failure", num_retries: 1}
    outlier_detection: {consecutive_5xx: 5, interval: 10s, base_ejection_time: 30s, max_ejection_percent: 10}
    circuit_breakers: {max_connections: 1024, max_pending_requests: 1024, max_requests: 1024, max_retries: 3}
    health_check: {http: /healthz, interval: 5s, timeout: 1s, unhealthy_threshold: 3, healthy_threshold: 2}
tracing: {otlp_endpoint: 127.0.0.1:4317, sampling_ratio: 1.0}
`
	if _, err := Parse("design.yaml", []byte(doc)); err != nil {
		t.Fatal(err)
	}
}

// TestReadmeConfigReference keeps the README's config reference in step
// with the code: every key the decoder knows appears in the README, and
// every key the README's reference lists is known.
func TestReadmeConfigReference(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	readme := string(data)
	start := strings.Index(readme, "<!-- config-reference:start -->")
	end := strings.Index(readme, "<!-- config-reference:end -->")
	if start < 0 || end < start {
		t.Fatal("README.md lacks the config-reference markers")
	}
	ref := readme[start:end]
	known := map[string]bool{}
	collectKeys(reflect.TypeOf(Config{}), "", known)
	documented := map[string]bool{}
	keyRe := regexp.MustCompile("`([a-z0-9_.\\[\\]]+)`")
	for _, line := range strings.Split(ref, "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 3 {
			continue
		}
		for _, m := range keyRe.FindAllStringSubmatch(cells[1], -1) { // first column: the keys
			documented[m[1]] = true
		}
	}
	var missing, unknown []string
	for k := range known {
		// defaults.X is upstreams[].X for every served service.
		if rest, ok := strings.CutPrefix(k, "defaults."); ok && documented["upstreams[]."+rest] {
			continue
		}
		if !documented[k] {
			missing = append(missing, k)
		}
	}
	for k := range documented {
		if !known[k] {
			unknown = append(unknown, k)
		}
	}
	sort.Strings(missing)
	sort.Strings(unknown)
	if len(missing) > 0 {
		t.Errorf("config keys missing from the README reference: %v", missing)
	}
	if len(unknown) > 0 {
		t.Errorf("README reference lists keys the code does not know: %v", unknown)
	}
}

// collectKeys lists dotted key paths (lists as name[]).
func collectKeys(t reflect.Type, prefix string, out map[string]bool) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || t.String() == "time.Duration" {
		return
	}
	for k, ft := range yamlFields(t) {
		p := join(prefix, k)
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		switch ft.Kind() {
		case reflect.Slice:
			el := ft.Elem()
			for el.Kind() == reflect.Pointer {
				el = el.Elem()
			}
			if el.Kind() == reflect.Struct {
				out[p+"[]"] = true
				collectKeys(el, p+"[]", out)
				continue
			}
			out[p] = true
		case reflect.Struct:
			// AdminConfig's UnmarshalYAML takes a short form too; its keys
			// are the struct's.
			if ft != reflect.TypeOf(AdminConfig{}) && (ft.String() == "time.Duration" || ft.Implements(unmarshalerType) || reflect.PointerTo(ft).Implements(unmarshalerType)) {
				out[p] = true
				continue
			}
			out[p] = true
			collectKeys(ft, p, out)
		default:
			out[p] = true
		}
	}
}
