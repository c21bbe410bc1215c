package breaker

import (
	"errors"
	"fmt"
	"math"
)

// ErrInvalidConfig is wrapped by every error Validate returns.
var ErrInvalidConfig = errors.New("breaker: invalid config")

// Envoy's defaults (envoy/config/cluster/v3/circuit_breaker.proto).
const (
	DefaultMaxConnections      = 1024
	DefaultMaxPendingRequests  = 1024
	DefaultMaxRequests         = 1024
	DefaultMaxRetries          = 3
	DefaultBudgetPercent       = 20.0
	DefaultMinRetryConcurrency = 3
)

// Config is Envoy's circuit_breakers thresholds for the default priority,
// flattened (Envoy nests them under thresholds[].priority). A nil pointer
// means "unset"; SetDefaults fills it. Every limit may be 0, which
// forbids that resource altogether, as in Envoy (max_retries: 0 turns
// retries off).
type Config struct {
	MaxConnections     *uint32 `yaml:"max_connections" json:"max_connections"`
	MaxPendingRequests *uint32 `yaml:"max_pending_requests" json:"max_pending_requests"`
	MaxRequests        *uint32 `yaml:"max_requests" json:"max_requests"`
	MaxRetries         *uint32 `yaml:"max_retries" json:"max_retries"`
	// RetryBudget, when present (even empty: `retry_budget: {}`), replaces
	// max_retries.
	RetryBudget *RetryBudgetConfig `yaml:"retry_budget" json:"retry_budget,omitempty"`
}

// RetryBudgetConfig is Envoy's RetryBudget: the retries allowed at once are
// max(min_retry_concurrency, budget_percent% × (active + pending requests)).
// budget_percent is a plain number here (Envoy wraps it: {value: 20.0}).
type RetryBudgetConfig struct {
	BudgetPercent       *float64 `yaml:"budget_percent" json:"budget_percent"`
	MinRetryConcurrency *uint32  `yaml:"min_retry_concurrency" json:"min_retry_concurrency"`
}

// SetDefaults fills every unset key with Envoy's default. retry_budget is
// left absent if absent; if present, its unset keys are filled.
func (c *Config) SetDefaults() {
	for _, f := range []struct {
		p   **uint32
		def uint32
	}{
		{&c.MaxConnections, DefaultMaxConnections},
		{&c.MaxPendingRequests, DefaultMaxPendingRequests},
		{&c.MaxRequests, DefaultMaxRequests},
		{&c.MaxRetries, DefaultMaxRetries},
	} {
		if *f.p == nil {
			*f.p = new(f.def)
		}
	}
	if rb := c.RetryBudget; rb != nil {
		if rb.BudgetPercent == nil {
			rb.BudgetPercent = new(float64(DefaultBudgetPercent))
		}
		if rb.MinRetryConcurrency == nil {
			rb.MinRetryConcurrency = new(uint32(DefaultMinRetryConcurrency))
		}
	}
}

// Validate checks the config; unset keys stand for their defaults. path is
// this object's YAML key path, e.g. "upstreams[0].circuit_breakers"; errors
// wrap ErrInvalidConfig and name the full key and the bad value.
func (c Config) Validate(path string) error {
	if rb := c.RetryBudget; rb != nil && rb.BudgetPercent != nil {
		if p := *rb.BudgetPercent; math.IsNaN(p) || p < 0 || p > 100 {
			return fmt.Errorf("%w: %s: %v must be in 0..100",
				ErrInvalidConfig, joinKey(path, "retry_budget.budget_percent"), p)
		}
	}
	return nil
}

func joinKey(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}
