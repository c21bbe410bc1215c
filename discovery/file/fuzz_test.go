package file

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/sidemesh/sidemesh/discovery"
)

func FuzzParse(f *testing.F) {
	f.Add([]byte("services:\n  api:\n    - {address: 127.0.0.1:7001, weight: 1}\n    - {address: 127.0.0.1:7002, weight: 3}\n"))
	f.Add([]byte("services:\n  api: &a\n    - &e {address: 127.0.0.1:7001, weight: 2}\n    - {<<: *e, address: '[::1]:7002'}\n  web: *a\n"))
	f.Add([]byte("services:\n  api:\n    - {address: 127.0.0.1:7001, weight: 1.5}\n"))
	f.Add([]byte("services: &s {a: [*s]}\n"))
	f.Add([]byte(aliasBomb()))
	f.Add([]byte("services:\n  api: [\n"))
	for _, doc := range scanDocs {
		f.Add([]byte(doc))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		// What scan accepts, the general decoder reads the same way.
		if scanned, ok := scan(data); ok {
			decoded, err := decode("f.yaml", data)
			if err != nil {
				t.Fatalf("scan accepted a document the decoder rejects (%v):\n%s", err, data)
			}
			if !reflect.DeepEqual(scanned, decoded) {
				t.Fatalf("scan read\n%s\n%+v\nthe decoder\n%+v", data, scanned, decoded)
			}
		}
		got, err := Parse("f.yaml", data)
		if err != nil {
			if !errors.Is(err, ErrParse) || !strings.Contains(err.Error(), "f.yaml") {
				t.Fatalf("error without ErrParse or the file name: %v", err)
			}
			return
		}
		for svc, eps := range got {
			seen := map[string]bool{}
			for _, ep := range eps {
				if ep.Weight < 1 || ep.Weight > discovery.MaxWeight || seen[ep.Address] {
					t.Fatalf("%s: accepted endpoint %+v", svc, ep)
				}
				if err := discovery.ValidateEndpoint(ep); err != nil {
					t.Fatalf("%s: accepted an invalid endpoint: %v", svc, err)
				}
				seen[ep.Address] = true
			}
			if _, err := discovery.NewSnapshot(svc, 1, eps); err != nil {
				t.Fatalf("accepted endpoints make no snapshot: %v", err)
			}
		}
	})
}
