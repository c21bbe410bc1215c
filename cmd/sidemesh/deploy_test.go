package main

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"gopkg.in/yaml.v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	k8syaml "sigs.k8s.io/yaml"

	"github.com/sidemesh/sidemesh/sidecar"
)

// splitDocs returns each YAML document of a multi-document file.
func splitDocs(t *testing.T, data []byte) [][]byte {
	t.Helper()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var out [][]byte
	for {
		var n yaml.Node
		if err := dec.Decode(&n); errors.Is(err, io.EOF) {
			return out
		} else if err != nil {
			t.Fatal(err)
		}
		b, err := yaml.Marshal(&n)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
}

// decodeStrict decodes one manifest into its Kubernetes type, refusing
// unknown fields, and returns it.
func decodeStrict(t *testing.T, where string, doc []byte) any {
	t.Helper()
	var meta struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := k8syaml.Unmarshal(doc, &meta); err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	var obj any
	switch meta.APIVersion + "/" + meta.Kind {
	case "apps/v1/Deployment":
		obj = &appsv1.Deployment{}
	case "v1/Service":
		obj = &corev1.Service{}
	case "v1/ConfigMap":
		obj = &corev1.ConfigMap{}
	default:
		t.Fatalf("%s: unexpected %s %s", where, meta.APIVersion, meta.Kind)
	}
	if err := k8syaml.UnmarshalStrict(doc, obj); err != nil {
		t.Fatalf("%s: %s: %v", where, meta.Kind, err)
	}
	return obj
}

// The shipped Kubernetes example decodes strictly with the API's own types,
// before and after injection, and every sidecar config in it (and in the
// compose example) is a valid config once the platform's variables are set.
func TestDeployExamples(t *testing.T) {
	t.Setenv("POD_IP", "198.18.0.10")
	t.Setenv("NODE", "api-1")
	dir := filepath.Join("..", "..", "deploy", "kubernetes")
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in %s: %v", dir, err)
	}
	configMaps := map[string]bool{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range splitDocs(t, data) {
			obj := decodeStrict(t, filepath.Base(f), doc)
			if cm, ok := obj.(*corev1.ConfigMap); ok {
				configMaps[cm.Name] = true
				if _, err := sidecar.Parse(cm.Name+"/sidemesh.yaml", []byte(cm.Data["sidemesh.yaml"])); err != nil {
					t.Errorf("%s document %d: ConfigMap %s: %v", filepath.Base(f), i, cm.Name, err)
				}
			}
		}
	}
	for _, app := range []string{"api", "web"} {
		var out, errb bytes.Buffer
		in := filepath.Join(dir, app+".yaml")
		if code := run([]string{"inject", "-f", in, "--config-map", "sidemesh-" + app}, &out, &errb); code != 0 {
			t.Fatalf("inject %s: exit %d: %s", in, code, errb.String())
		}
		if !configMaps["sidemesh-"+app] {
			t.Errorf("no ConfigMap sidemesh-%s in %s", app, dir)
		}
		for _, doc := range splitDocs(t, out.Bytes()) {
			obj := decodeStrict(t, "inject "+app, doc)
			d, ok := obj.(*appsv1.Deployment)
			if !ok {
				continue
			}
			spec := d.Spec.Template.Spec
			if len(spec.InitContainers) != 2 || spec.InitContainers[1].RestartPolicy == nil ||
				*spec.InitContainers[1].RestartPolicy != corev1.ContainerRestartPolicyAlways {
				t.Errorf("inject %s: want the capture init container and a native sidecar, got %+v", app, spec.InitContainers)
			}
			var cmName string
			for _, v := range spec.Volumes {
				if v.Name == "sidemesh-config" && v.ConfigMap != nil {
					cmName = v.ConfigMap.Name
				}
			}
			if cmName != "sidemesh-"+app {
				t.Errorf("inject %s: config volume from ConfigMap %q, want sidemesh-%s", app, cmName, app)
			}
		}
	}
	compose, err := filepath.Glob(filepath.Join("..", "..", "deploy", "compose", "*.yaml"))
	if err != nil || len(compose) == 0 {
		t.Fatalf("no compose configs: %v", err)
	}
	for _, f := range compose {
		if _, err := sidecar.Load(f); err != nil {
			t.Errorf("compose config: %v", err)
		}
	}
}
