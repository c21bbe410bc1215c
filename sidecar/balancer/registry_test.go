package balancer

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

func TestRegistryOrderAndHashing(t *testing.T) {
	want := "weighted_random, round_robin, least_request, ring_hash, maglev"
	if got := PolicyList(); got != want {
		t.Errorf("PolicyList() = %q, want %q", got, want)
	}
	for _, name := range Policies() {
		wantHash := name == RingHash || name == Maglev
		if got := Hashing(name); got != wantHash {
			t.Errorf("Hashing(%q) = %v, want %v", name, got, wantHash)
		}
	}
	if Hashing("nope") {
		t.Error(`Hashing("nope") = true`)
	}
	_, err := New("nope", Config{}, nil, 0)
	if !errors.Is(err, ErrUnknownPolicy) || !strings.Contains(err.Error(), want) {
		t.Errorf("New(nope) = %v, want ErrUnknownPolicy listing %q", err, want)
	}
}

func TestRegisterRefusesDuplicates(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("registering round_robin twice did not panic")
		}
	}()
	Register(Policy{Name: RoundRobin, Build: func(BuildArgs) Picker { return constPicker(0) }})
}

// The table size from maglev_lb_config sets the table: a hash maps to
// table[hash mod size], so with a different size the same hashes land
// differently, and the table holds exactly TableSize entries.
func TestMaglevTableSize(t *testing.T) {
	eps := make([]Endpoint, 4)
	for i := range eps {
		eps[i] = Endpoint{Address: fmt.Sprintf("198.18.0.%d:80", i+1), Weight: 1}
	}
	for _, size := range []uint64{7, 251, MaglevTableSize} {
		p, err := New(Maglev, Config{Maglev: MaglevConfig{TableSize: size}}, eps, 0)
		if err != nil {
			t.Fatal(err)
		}
		mp := p.(*maglevPicker[uint16])
		if uint64(len(mp.table)) != size {
			t.Errorf("table_size %d: table has %d entries", size, len(mp.table))
		}
		r := rand.New(rand.NewPCG(1, 2))
		for range 100 {
			h := r.Uint64()
			if got, want := p.Pick(&PickInfo{Hash: h, HasHash: true}), int(mp.table[h%size]); got != want {
				t.Fatalf("table_size %d: Pick(%d) = %d, want table[%d] = %d", size, h, got, h%size, want)
			}
		}
	}
	for _, bad := range []uint64{8, 1, MaxMaglevTableSize + 2} {
		err := Config{Maglev: MaglevConfig{TableSize: bad}}.Validate("upstreams[0]")
		want := fmt.Sprintf("upstreams[0].maglev_lb_config.table_size: %d must be a prime", bad)
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), want) {
			t.Errorf("table_size %d: Validate = %v, want %q", bad, err, want)
		}
	}
}
