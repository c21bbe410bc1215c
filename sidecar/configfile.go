package sidecar

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/sidemesh/sidemesh/internal/confyaml"
	"github.com/sidemesh/sidemesh/upstream"
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
		return nil, fmt.Errorf("%s: %w%s", name, err, lineOf(res, err))
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

// errKey finds the key path a validation error names: the key of an
// upstream.KeyError, else the path after "config: ".
var errKey = regexp.MustCompile(`config: ([A-Za-z0-9_.\[\]]+)[: ]`)

// lineOf is " (line N)" for the key a validation error names, when the
// document has it (or an enclosing key) and the message has no line yet.
func lineOf(res *confyaml.Result, err error) string {
	if strings.Contains(err.Error(), "(line ") {
		return ""
	}
	key := ""
	var ke *upstream.KeyError
	if errors.As(err, &ke) {
		key = ke.Key
	} else if m := errKey.FindStringSubmatch(err.Error()); m != nil {
		key = m[1]
	}
	if l := res.Line(key); key != "" && l > 0 {
		return fmt.Sprintf(" (line %d)", l)
	}
	return ""
}
