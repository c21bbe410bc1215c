package sidecar

import (
	"bytes"
	"fmt"
	"os"
	"reflect"
	"strings"

	"gopkg.in/yaml.v3"
)

// Load reads, strictly decodes, defaults and validates a config file.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return Parse(path, data)
}

// Parse decodes a config document. Unknown keys are errors naming their path.
func Parse(name string, data []byte) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrConfig, name, err)
	}
	if len(root.Content) == 0 {
		return nil, fmt.Errorf("%w: %s: empty file", ErrConfig, name)
	}
	if err := checkKnownKeys(&root, reflect.TypeOf(Config{}), ""); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		msg := err.Error()
		msg = strings.TrimPrefix(msg, "yaml: unmarshal errors:\n  ")
		return nil, fmt.Errorf("%s: %w: %s", name, ErrConfig, msg)
	}
	recordSetKeys(&root, &c)
	c.source = name
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &c, nil
}

// recordSetKeys remembers which upstream keys the file set, so that xDS
// cluster settings only fill what the file left out.
func recordSetKeys(root *yaml.Node, c *Config) {
	doc := root
	if doc.Kind == yaml.DocumentNode && len(doc.Content) > 0 {
		doc = doc.Content[0]
	}
	if doc.Kind != yaml.MappingNode {
		return
	}
	for i := 0; i+1 < len(doc.Content); i += 2 {
		if doc.Content[i].Value != "upstreams" || doc.Content[i+1].Kind != yaml.SequenceNode {
			continue
		}
		for j, un := range doc.Content[i+1].Content {
			if j >= len(c.Upstreams) || un.Kind != yaml.MappingNode {
				continue
			}
			set := map[string]bool{}
			for k := 0; k+1 < len(un.Content); k += 2 {
				set[un.Content[k].Value] = true
			}
			c.Upstreams[j].set = set
		}
	}
}

// IsSet reports whether the config file set the upstream key.
func (u *Upstream) IsSet(key string) bool { return u.set[key] }

