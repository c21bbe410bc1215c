package sidecar

import (
	"errors"
	"fmt"
	"os"

	"github.com/sidemesh/sidemesh/internal/confyaml"
)

// Load reads, strictly decodes, defaults and validates a config file.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return Parse(path, data)
}

// Parse decodes a config document: anchors, aliases and merge keys
// resolve (within confyaml's expansion bound), ${VAR} and ${VAR:-default}
// expand from the environment, and every error names the key path and
// line: `FILE: config: upstreams[0].lb_polcy: unknown key (line 5)`.
func Parse(name string, data []byte) (*Config, error) {
	return parse(name, data, os.LookupEnv)
}

func parse(name string, data []byte, lookup func(string) (string, bool)) (*Config, error) {
	var c Config
	res, err := confyaml.Decode(data, &c, confyaml.Options{Lookup: lookup})
	if errors.Is(err, confyaml.ErrEmpty) {
		return nil, fmt.Errorf("%w: %s: empty file", ErrConfig, name)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %w", name, ErrConfig, err)
	}
	recordSetKeys(res, &c)
	c.source = name
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &c, nil
}

// recordSetKeys remembers which upstream keys the file set (merge keys
// included), so that xDS cluster settings only fill what the file left out.
func recordSetKeys(res *confyaml.Result, c *Config) {
	for j := range c.Upstreams {
		keys := res.Keys(fmt.Sprintf("upstreams[%d]", j))
		if keys == nil {
			continue
		}
		set := make(map[string]bool, len(keys))
		for _, k := range keys {
			set[k] = true
		}
		c.Upstreams[j].set = set
	}
}

// IsSet reports whether the config file set the upstream key.
func (u *Upstream) IsSet(key string) bool { return u.set[key] }
