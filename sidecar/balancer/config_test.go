package balancer

import (
	"errors"
	"math"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

func ptr[T any](v T) *T { return &v }

func TestConfigSetDefaults(t *testing.T) {
	tests := []struct {
		name string
		in   Config
		want Config
	}{
		{
			name: "zero gets Envoy defaults",
			want: Config{
				LeastRequest: LeastRequestConfig{ChoiceCount: 2, ActiveRequestBias: ptr(1.0)},
				RingHash:     RingHashConfig{MinimumRingSize: 1024, MaximumRingSize: 8388608},
			},
		},
		{
			name: "explicit values kept, bias 0 included",
			in: Config{
				LeastRequest: LeastRequestConfig{ChoiceCount: 5, ActiveRequestBias: ptr(0.0)},
				RingHash:     RingHashConfig{MinimumRingSize: 64, MaximumRingSize: 4096},
			},
			want: Config{
				LeastRequest: LeastRequestConfig{ChoiceCount: 5, ActiveRequestBias: ptr(0.0)},
				RingHash:     RingHashConfig{MinimumRingSize: 64, MaximumRingSize: 4096},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.in
			got.SetDefaults()
			if got.LeastRequest.ChoiceCount != tt.want.LeastRequest.ChoiceCount ||
				got.LeastRequest.Bias() != tt.want.LeastRequest.Bias() ||
				got.RingHash != tt.want.RingHash {
				t.Errorf("SetDefaults() = %+v (bias %v), want %+v (bias %v)",
					got, got.LeastRequest.Bias(), tt.want, tt.want.LeastRequest.Bias())
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string // "" for valid
	}{
		{name: "zero is valid (defaults)", cfg: Config{}},
		{name: "explicit valid", cfg: Config{
			LeastRequest: LeastRequestConfig{ChoiceCount: 3, ActiveRequestBias: ptr(0.0)},
			RingHash:     RingHashConfig{MinimumRingSize: 8388608, MaximumRingSize: 8388608},
		}},
		{
			name:    "choice_count 1",
			cfg:     Config{LeastRequest: LeastRequestConfig{ChoiceCount: 1}},
			wantErr: "upstreams[0].least_request_lb_config.choice_count: 1 must be >= 2",
		},
		{
			name:    "negative bias",
			cfg:     Config{LeastRequest: LeastRequestConfig{ActiveRequestBias: ptr(-0.5)}},
			wantErr: "upstreams[0].least_request_lb_config.active_request_bias: -0.5 must be a finite number >= 0",
		},
		{
			name:    "NaN bias",
			cfg:     Config{LeastRequest: LeastRequestConfig{ActiveRequestBias: ptr(math.NaN())}},
			wantErr: "upstreams[0].least_request_lb_config.active_request_bias: NaN must be a finite number >= 0",
		},
		{
			name:    "minimum too large",
			cfg:     Config{RingHash: RingHashConfig{MinimumRingSize: 8388609}},
			wantErr: "upstreams[0].ring_hash_lb_config.minimum_ring_size: 8388609 must be <= 8388608",
		},
		{
			name:    "maximum too large",
			cfg:     Config{RingHash: RingHashConfig{MaximumRingSize: 1 << 30}},
			wantErr: "upstreams[0].ring_hash_lb_config.maximum_ring_size: 1073741824 must be <= 8388608",
		},
		{
			name:    "minimum above maximum",
			cfg:     Config{RingHash: RingHashConfig{MinimumRingSize: 2048, MaximumRingSize: 1024}},
			wantErr: "upstreams[0].ring_hash_lb_config.minimum_ring_size: 2048 must be <= maximum_ring_size (1024)",
		},
		{
			name:    "minimum above defaulted maximum is still checked against the limit first",
			cfg:     Config{RingHash: RingHashConfig{MinimumRingSize: 9000000}},
			wantErr: "upstreams[0].ring_hash_lb_config.minimum_ring_size: 9000000 must be <= 8388608",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate("upstreams[0]")
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want %q", tt.wantErr)
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("Validate() = %v, not wrapping ErrInvalidConfig", err)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Validate() = %q, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestConfigValidateEmptyPath(t *testing.T) {
	err := Config{LeastRequest: LeastRequestConfig{ChoiceCount: 1}}.Validate("")
	if err == nil || !strings.Contains(err.Error(), ": least_request_lb_config.choice_count: 1") {
		t.Fatalf("Validate(\"\") = %v, want the key without a leading dot", err)
	}
}

func TestConfigYAML(t *testing.T) {
	const doc = `
least_request_lb_config: {choice_count: 3, active_request_bias: 0}
ring_hash_lb_config: {minimum_ring_size: 2048, maximum_ring_size: 65536}
`
	dec := yaml.NewDecoder(strings.NewReader(doc))
	dec.KnownFields(true)
	var cfg Config
	if err := dec.Decode(&cfg); err != nil {
		t.Fatalf("decode: %v", err)
	}
	cfg.SetDefaults()
	if cfg.LeastRequest.ChoiceCount != 3 || cfg.LeastRequest.Bias() != 0 ||
		cfg.RingHash.MinimumRingSize != 2048 || cfg.RingHash.MaximumRingSize != 65536 {
		t.Errorf("decoded %+v (bias %v)", cfg, cfg.LeastRequest.Bias())
	}
	if err := cfg.Validate(""); err != nil {
		t.Errorf("Validate: %v", err)
	}
}

func TestValidPolicy(t *testing.T) {
	for _, p := range []string{"weighted_random", "round_robin", "least_request", "ring_hash", "maglev"} {
		if !ValidPolicy(p) {
			t.Errorf("ValidPolicy(%q) = false", p)
		}
	}
	for _, p := range []string{"", "random", "ROUND_ROBIN", "ring-hash"} {
		if ValidPolicy(p) {
			t.Errorf("ValidPolicy(%q) = true", p)
		}
	}
	if got := len(Policies()); got != 5 {
		t.Errorf("len(Policies()) = %d, want 5", got)
	}
}

func TestNewErrors(t *testing.T) {
	_, err := New("random", Config{}, endpoints(1, 1), 0)
	if !errors.Is(err, ErrUnknownPolicy) || !strings.Contains(err.Error(), `"random"`) {
		t.Errorf("New(random) = %v, want ErrUnknownPolicy naming it", err)
	}
	_, err = New(LeastRequest, Config{LeastRequest: LeastRequestConfig{ChoiceCount: 1}}, endpoints(1, 1), 0)
	if !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("New with choice_count 1 = %v, want ErrInvalidConfig", err)
	}
}
