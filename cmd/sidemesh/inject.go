package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// cmdInject prints Kubernetes manifests with the sidecar added to every pod
// template (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob).
//
// The sidecar is a native sidecar (an init container with restartPolicy:
// Always, Kubernetes ≥ 1.29) with a startup probe on /ready, so the app
// starts only once the sidecar can route, the sidecar outlives the app on
// shutdown, and Jobs finish (istio/istio#11130, linkerd/linkerd2#1869).
// An init container installs the transparent-capture rules.
func cmdInject(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("inject", flag.ContinueOnError)
	fs.SetOutput(stderr)
	in := fs.String("f", "", "input manifests (YAML, - for stdin)")
	image := fs.String("image", "ghcr.io/sidemesh/sidemesh:"+injectTag(), "sidecar image")
	configMap := fs.String("config-map", "sidemesh-config", "ConfigMap holding sidemesh.yaml")
	noCapture := fs.Bool("no-capture", false, "do not add the capture init container")
	if code, ok := parseFlags(fs, "sidemesh inject -f IN.yaml [flags]", args, stdout, stderr); !ok {
		return code
	}
	if *in == "" {
		fmt.Fprintln(stderr, "sidemesh inject: -f IN.yaml is required")
		return 2
	}
	var data []byte
	var err error
	if *in == "-" {
		data, err = io.ReadAll(os.Stdin)
	} else {
		data, err = os.ReadFile(*in)
	}
	if err != nil {
		fmt.Fprintln(stderr, "sidemesh inject:", err)
		return 1
	}
	out, err := inject(data, injectOptions{Image: *image, ConfigMap: *configMap, Capture: !*noCapture})
	if err != nil {
		fmt.Fprintf(stderr, "sidemesh inject: %s: %v\n", *in, err)
		return 1
	}
	_, _ = stdout.Write(out)
	return 0
}

func injectTag() string {
	v := versionString()
	if v == "" || v == "dev" {
		return "latest"
	}
	return v
}

type injectOptions struct {
	Image     string
	ConfigMap string
	Capture   bool
}

// Sidecar ports (Istio's numbering, which users of meshes know).
const (
	injectCapturePort = 15001
	injectInboundPort = 15006
	injectProbePort   = 15021
	injectProxyUID    = 1337
)

func inject(data []byte, o injectOptions) ([]byte, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var out bytes.Buffer
	enc := yaml.NewEncoder(&out)
	enc.SetIndent(2)
	n := 0
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		n++
		if len(doc.Content) == 0 {
			continue
		}
		if err := injectDoc(doc.Content[0], o, n); err != nil {
			return nil, err
		}
		if err := enc.Encode(&doc); err != nil {
			return nil, err
		}
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

func mapGet(m *yaml.Node, key string) *yaml.Node {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

func mapSet(m *yaml.Node, key string, v *yaml.Node) {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			m.Content[i+1] = v
			return
		}
	}
	m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: key}, v)
}

// podSpec finds the pod spec of a workload document, or nil.
func podSpec(doc *yaml.Node) (*yaml.Node, string) {
	kind := ""
	if k := mapGet(doc, "kind"); k != nil {
		kind = k.Value
	}
	spec := mapGet(doc, "spec")
	switch kind {
	case "Pod":
		return spec, kind
	case "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job":
		return mapGet(mapGet(spec, "template"), "spec"), kind
	case "CronJob":
		return mapGet(mapGet(mapGet(mapGet(spec, "jobTemplate"), "spec"), "template"), "spec"), kind
	}
	return nil, kind
}

func injectDoc(doc *yaml.Node, o injectOptions, n int) error {
	spec, kind := podSpec(doc)
	if spec == nil {
		if kind == "Pod" || kind == "Deployment" || kind == "StatefulSet" || kind == "DaemonSet" || kind == "Job" || kind == "CronJob" || kind == "ReplicaSet" {
			return fmt.Errorf("document %d (%s): no pod spec found", n, kind)
		}
		return nil // not a workload: passed through unchanged
	}
	inits := mapGet(spec, "initContainers")
	if inits == nil {
		inits = &yaml.Node{Kind: yaml.SequenceNode}
		mapSet(spec, "initContainers", inits)
	}
	for _, c := range inits.Content {
		if name := mapGet(c, "name"); name != nil && name.Value == "sidemesh" {
			return nil // already injected: idempotent
		}
	}
	var extra []*yaml.Node
	if o.Capture {
		// The capture rules are programmed through netlink by the sidecar
		// binary itself (no iptables in the image): outbound TCP to the
		// transparent listener, inbound TCP to the app's declared ports (all
		// ports when none are declared) to the inbound listener.
		extra = append(extra, mustNode(fmt.Sprintf(`
name: sidemesh-init
image: %s
args: ["iptables", "install", "--proxy-port", "%d", "--proxy-uid", "%d", "--inbound-port", "%d", "--inbound-ports", "%s", "--exclude-ports", "%d"]
securityContext:
  capabilities: {add: [NET_ADMIN], drop: [ALL]}
  runAsUser: 0
  runAsNonRoot: false
`, o.Image, injectCapturePort, injectProxyUID, injectInboundPort, appPorts(spec), injectProbePort)))
	}
	extra = append(extra, mustNode(fmt.Sprintf(`
name: sidemesh
image: %s
restartPolicy: Always
args: ["run", "-c", "/etc/sidemesh/sidemesh.yaml"]
env:
  - name: POD_IP
    valueFrom: {fieldRef: {fieldPath: status.podIP}}
ports:
  - {name: sidemesh-probe, containerPort: %d}
startupProbe:
  httpGet: {path: /ready, port: %d}
  periodSeconds: 1
  failureThreshold: 60
readinessProbe:
  httpGet: {path: /ready, port: %d}
  periodSeconds: 5
securityContext:
  runAsUser: %d
  runAsNonRoot: true
  readOnlyRootFilesystem: true
  allowPrivilegeEscalation: false
  capabilities: {drop: [ALL]}
volumeMounts:
  - {name: sidemesh-config, mountPath: /etc/sidemesh, readOnly: true}
`, o.Image, injectProbePort, injectProbePort, injectProbePort, injectProxyUID)))
	inits.Content = append(extra, inits.Content...)
	vols := mapGet(spec, "volumes")
	if vols == nil {
		vols = &yaml.Node{Kind: yaml.SequenceNode}
		mapSet(spec, "volumes", vols)
	}
	vols.Content = append(vols.Content, mustNode(fmt.Sprintf("name: sidemesh-config\nconfigMap: {name: %s}\n", o.ConfigMap)))
	return nil
}

// appPorts lists the TCP container ports the pod's containers declare, in
// order, for --inbound-ports; "*" (every port) when they declare none.
func appPorts(spec *yaml.Node) string {
	var ports []string
	if cs := mapGet(spec, "containers"); cs != nil {
		for _, c := range cs.Content {
			ps := mapGet(c, "ports")
			if ps == nil {
				continue
			}
			for _, p := range ps.Content {
				if proto := mapGet(p, "protocol"); proto != nil && proto.Value != "TCP" {
					continue
				}
				if cp := mapGet(p, "containerPort"); cp != nil && cp.Value != "" && !slices.Contains(ports, cp.Value) {
					ports = append(ports, cp.Value)
				}
			}
		}
	}
	if len(ports) == 0 {
		return "*"
	}
	return strings.Join(ports, ",")
}

func mustNode(s string) *yaml.Node {
	var n yaml.Node
	if err := yaml.Unmarshal([]byte(strings.TrimSpace(s)), &n); err != nil {
		panic(err)
	}
	return n.Content[0]
}
