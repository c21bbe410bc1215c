package file

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
)

// scanDocs are documents in the shape scan reads (also FuzzParse's seeds).
var scanDocs = []string{
	"services:\n  api:\n    - {address: 127.0.0.1:7001, weight: 1}\n    - {address: 127.0.0.1:7002, weight: 3}\n",
	"# endpoints\nservices:   # all of them\n\n  api:  # the api\n    - address: 127.0.0.1:7001\n      weight: 2\n      zone: us-east-1a\n" +
		"    # a comment between items\n    - {address: api-2.local:80 , priority: 1,zone: us-east-1b}\n  web.v2:\n   - address: 10.0.0.1:8080",
	"services:\n    a_b-c:\n        - {zone: z, priority: 0, weight: 16777216, address: h:1}\n    x:\n      - address: h:2\n        priority: 127\n",
	// read by scan, then refused by the checks both paths share
	"services:\n  api:\n    - {address: 127.0.0.1:7001, weight: 0}\n",
	"services:\n  api:\n    - {address: localhost}\n",
	"services:\n  api:\n    - {address: 127.0.0.1:1}\n    - address: 127.0.0.1:1\n",
}

// Documents that are YAML but not scan's shape: the general decoder reads
// them (scan must say no rather than read them differently).
var notScanDocs = []string{
	"services:\n  api:\n    - {address: '127.0.0.1:7001'}\n",                                  // quotes
	"services:\n  api:\n    - &e {address: 127.0.0.1:1}\n  web:\n    - *e\n",                  // anchors
	"services:\n  api:\n  - {address: 127.0.0.1:1}\n",                                         // items at the key's indentation
	"services:\n  api: []\n",                                                                  // flow list
	"services:\n  api:\n  web:\n    - {address: 127.0.0.1:1}\n",                               // a service without items
	"services:\n  api:\n    - {address: 127.0.0.1:1, weight: 010}\n",                          // not plain decimal
	"services:\n  api:\n    - {address: 127.0.0.1:1, weight: 0x10}\n",                         // hex
	"services:\n  api:\n    - {address: 127.0.0.1:1#x}\n",                                     // # inside a value
	"services:\n  api:\n    - address: 127.0.0.1:1 b\n",                                       // a space inside a value
	"services:\n  api:\n    - {address: 127.0.0.1:1,\n       weight: 2}\n",                    // flow mapping over lines
	"services:\n  null:\n    - {address: 127.0.0.1:1}\n",                                      // a null key
	"services:\n  api:\n    - {address: 127.0.0.1:1, zone: null}\n",                           // a null value
	"---\nservices:\n  api:\n    - {address: 127.0.0.1:1}\n",                                  // document marker
	"services:\r\n  api:\r\n    - {address: 127.0.0.1:1}\r\n",                                 // CR
	"services:\n  api:\n    -\n      address: 127.0.0.1:1\n",                                  // item on the next line
	"services:\n  api:\n    - {address: 127.0.0.1:1}\n  api:\n    - {address: 127.0.0.1:2}\n", // a service twice
}

func TestScanReadsWhatTheDecoderReads(t *testing.T) {
	for _, doc := range scanDocs {
		scanned, ok := scan([]byte(doc))
		if !ok {
			t.Errorf("scan refused\n%s", doc)
			continue
		}
		decoded, err := decode("f.yaml", []byte(doc))
		if err != nil || !reflect.DeepEqual(scanned, decoded) {
			t.Errorf("scan read\n%s\nas %+v; the decoder: %+v, %v", doc, scanned, decoded, err)
		}
	}
	for _, doc := range notScanDocs {
		if got, ok := scan([]byte(doc)); ok {
			t.Errorf("scan read %+v from\n%s", got, doc)
		}
	}
}

// The general decoder still writes every error, with its line, for
// documents scan does not read.
func TestParseErrorsOutsideScan(t *testing.T) {
	for doc, want := range map[string]string{
		"services:\n  api:\n    - {address: 127.0.0.1:1}\n    - {address: 127.0.0.1:2, weight: 1.5}\n": "ep.yaml:4: services.api[1].weight: 1.5 is not an integer",
		"services:\n  api:\n    - address: 127.0.0.1:1\n      wieght: 2\n":                             "ep.yaml:4: services.api[0].wieght: unknown key",
		"services:\n  api:\n    - {address: 127.0.0.1:1, weight: 2, weight: 3}\n":                      "ep.yaml:3: services.api[0]",
	} {
		_, err := Parse("ep.yaml", []byte(doc))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want %q", doc, err, want)
		}
	}
}

// meshFile is 50 services × 200 endpoints.
func meshFile() []byte {
	var b strings.Builder
	b.WriteString("services:\n")
	for s := range 50 {
		fmt.Fprintf(&b, "  svc%d:\n", s)
		for e := range 200 {
			fmt.Fprintf(&b, "    - {address: 10.%d.%d.%d:8080, weight: %d}\n", s, e/250, e%250+1, 1+e%3)
		}
	}
	return []byte(b.String())
}

// A 10,000-endpoint file is read by scan, with a few allocations per
// endpoint (the general decoder makes about 60).
func TestParseAllocationsAtMeshScale(t *testing.T) {
	data := meshFile()
	if _, ok := scan(data); !ok {
		t.Fatal("scan refused the 50×200 file")
	}
	allocs := testing.AllocsPerRun(3, func() {
		if _, err := Parse("ep.yaml", data); err != nil {
			t.Fatal(err)
		}
	})
	if perEndpoint := allocs / 10000; perEndpoint > 4 {
		t.Fatalf("Parse: %.1f allocations per endpoint, want at most 4", perEndpoint)
	}
	t.Logf("Parse: %.0f allocations for 10,000 endpoints", allocs)
}

func BenchmarkParse(b *testing.B) {
	data := meshFile()
	for _, path := range []struct {
		name string
		f    func() error
	}{
		{"scan", func() error { _, err := Parse("ep.yaml", data); return err }},
		{"decoder", func() error { s, err := decode("ep.yaml", data); _ = s; return err }},
	} {
		b.Run(path.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := path.f(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// Polling reads the file into the same buffer: an unchanged 10,000-endpoint
// file costs no garbage per poll (os.ReadFile allocated its size each time).
func TestPollReadReusesItsBuffer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ep.yaml")
	data := meshFile()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	buf, err := readInto(path, nil)
	if err != nil || !bytes.Equal(buf, data) {
		t.Fatalf("readInto: %d bytes, %v", len(buf), err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 10 {
		if buf, err = readInto(path, buf); err != nil || len(buf) != len(data) {
			t.Fatalf("readInto: %d bytes, %v", len(buf), err)
		}
	}
	runtime.ReadMemStats(&after)
	if perRead := (after.TotalAlloc - before.TotalAlloc) / 10; perRead > 4096 {
		t.Fatalf("%d bytes allocated per read of a %d-byte file, want at most 4096", perRead, len(data))
	}
	if _, err := readInto(filepath.Join(t.TempDir(), "missing.yaml"), buf); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}
