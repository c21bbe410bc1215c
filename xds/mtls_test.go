package xds

import (
	"testing"

	"github.com/sidemesh/sidemesh/discovery"
)

// The mesh-instance mark crosses EDS as endpoint metadata and comes back as
// the endpoint's MTLS flag.
func TestLoadAssignmentCarriesMTLSMark(t *testing.T) {
	snap := mustSnap(t, "api", 1,
		discovery.Endpoint{Address: "127.0.0.1:1", Weight: 1, MTLS: true, Meta: map[string]string{discovery.MetaMTLS: "true"}},
		discovery.Endpoint{Address: "127.0.0.2:2", Weight: 1, MTLS: true},
		discovery.Endpoint{Address: "127.0.0.3:3", Weight: 1},
	)
	cla, err := loadAssignment("api", snap)
	if err != nil {
		t.Fatal(err)
	}
	eps, err := DecodeLoadAssignment(cla)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"127.0.0.1:1": true, "127.0.0.2:2": true, "127.0.0.3:3": false}
	for _, ep := range eps {
		if ep.MTLS != want[ep.Address] {
			t.Errorf("%s: MTLS %v, want %v", ep.Address, ep.MTLS, want[ep.Address])
		}
	}
}
