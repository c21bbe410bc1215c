package balancer

import (
	"fmt"
	"math"
)

// Defaults and limits, from Envoy's cluster.proto (LeastRequestLbConfig,
// RingHashLbConfig) and maglev.proto.
const (
	DefaultChoiceCount       = 2
	DefaultActiveRequestBias = 1.0
	DefaultMinimumRingSize   = 1024
	DefaultMaximumRingSize   = 8 * 1024 * 1024
	// MaxRingSize bounds both ring sizes (Envoy: lte 8388608).
	MaxRingSize = 8 * 1024 * 1024
	// MaglevTableSize is the size of the Maglev lookup table (Envoy's
	// default table_size; it must be prime).
	MaglevTableSize = 65537
	// MaxMaglevTableSize bounds table_size (Envoy: a prime up to 5000011).
	MaxMaglevTableSize = 5000011
)

// Config holds the policy-specific settings of an upstream. Only the part
// that matches the upstream's lb_policy is used. Immutable once handed to New.
type Config struct {
	LeastRequest LeastRequestConfig `yaml:"least_request_lb_config" json:"least_request_lb_config"`
	RingHash     RingHashConfig     `yaml:"ring_hash_lb_config" json:"ring_hash_lb_config"`
	// Maglev is Envoy's maglev_lb_config. It has no key in the config file
	// (the table size is an Envoy tuning knob nobody needed locally); the
	// control plane sets it over CDS.
	Maglev MaglevConfig `yaml:"-" json:"maglev_lb_config"`
}

// MaglevConfig is Envoy's maglev_lb_config.
type MaglevConfig struct {
	// TableSize is the number of table entries: a prime up to
	// MaxMaglevTableSize (default MaglevTableSize).
	TableSize uint64 `yaml:"-" json:"table_size"`
}

// Size returns TableSize, or its default when unset.
func (c MaglevConfig) Size() uint64 {
	if c.TableSize == 0 {
		return MaglevTableSize
	}
	return c.TableSize
}

// LeastRequestConfig is Envoy's least_request_lb_config.
type LeastRequestConfig struct {
	// ChoiceCount is how many random endpoints each pick compares (>= 2;
	// default 2, "power of two choices").
	ChoiceCount uint32 `yaml:"choice_count" json:"choice_count"`
	// ActiveRequestBias is the exponent in Envoy's effective weight
	// weight / (active + 1)^bias, used when weights differ (>= 0; default
	// 1.0; 0 ignores load). A pointer because 0 is a meaningful value.
	ActiveRequestBias *float64 `yaml:"active_request_bias" json:"active_request_bias"`
}

// Bias returns ActiveRequestBias, or its default when unset.
func (c LeastRequestConfig) Bias() float64 {
	if c.ActiveRequestBias == nil {
		return DefaultActiveRequestBias
	}
	return *c.ActiveRequestBias
}

// RingHashConfig is Envoy's ring_hash_lb_config (xxHash only).
type RingHashConfig struct {
	// MinimumRingSize is the least number of ring entries (default 1024).
	MinimumRingSize uint64 `yaml:"minimum_ring_size" json:"minimum_ring_size"`
	// MaximumRingSize caps the ring (default and limit 8388608).
	MaximumRingSize uint64 `yaml:"maximum_ring_size" json:"maximum_ring_size"`
}

// SetDefaults fills zero values with Envoy's defaults.
func (c *Config) SetDefaults() {
	if c.LeastRequest.ChoiceCount == 0 {
		c.LeastRequest.ChoiceCount = DefaultChoiceCount
	}
	if c.LeastRequest.ActiveRequestBias == nil {
		b := DefaultActiveRequestBias
		c.LeastRequest.ActiveRequestBias = &b
	}
	if c.RingHash.MinimumRingSize == 0 {
		c.RingHash.MinimumRingSize = DefaultMinimumRingSize
	}
	if c.RingHash.MaximumRingSize == 0 {
		c.RingHash.MaximumRingSize = DefaultMaximumRingSize
	}
	if c.Maglev.TableSize == 0 {
		c.Maglev.TableSize = MaglevTableSize
	}
}

// Validate checks the values New would use; zero values stand for their
// defaults. path is the YAML key path of the enclosing object (e.g.
// "upstreams[0]"); errors wrap ErrInvalidConfig and name the full key and
// the bad value.
func (c Config) Validate(path string) error {
	lr := joinKey(path, "least_request_lb_config")
	if n := c.LeastRequest.ChoiceCount; n == 1 {
		return fmt.Errorf("%w: %s.choice_count: %d must be >= 2", ErrInvalidConfig, lr, n)
	}
	if b := c.LeastRequest.Bias(); math.IsNaN(b) || math.IsInf(b, 0) || b < 0 {
		return fmt.Errorf("%w: %s.active_request_bias: %v must be a finite number >= 0", ErrInvalidConfig, lr, b)
	}
	rh := joinKey(path, "ring_hash_lb_config")
	lo, hi := c.RingHash.MinimumRingSize, c.RingHash.MaximumRingSize
	if lo > MaxRingSize {
		return fmt.Errorf("%w: %s.minimum_ring_size: %d must be <= %d", ErrInvalidConfig, rh, lo, MaxRingSize)
	}
	if hi > MaxRingSize {
		return fmt.Errorf("%w: %s.maximum_ring_size: %d must be <= %d", ErrInvalidConfig, rh, hi, MaxRingSize)
	}
	if lo == 0 {
		lo = DefaultMinimumRingSize
	}
	if hi == 0 {
		hi = DefaultMaximumRingSize
	}
	if lo > hi {
		return fmt.Errorf("%w: %s.minimum_ring_size: %d must be <= maximum_ring_size (%d)", ErrInvalidConfig, rh, lo, hi)
	}
	if n := c.Maglev.TableSize; n != 0 && (n > MaxMaglevTableSize || !isPrime(n)) {
		return fmt.Errorf("%w: %s.table_size: %d must be a prime <= %d", ErrInvalidConfig, joinKey(path, "maglev_lb_config"), n, MaxMaglevTableSize)
	}
	return nil
}

// isPrime is trial division; table sizes are at most MaxMaglevTableSize.
func isPrime(n uint64) bool {
	if n < 2 {
		return false
	}
	for d := uint64(2); d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}

func joinKey(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}
