package confyaml

import (
	"fmt"

	"gopkg.in/yaml.v3"
)

// visit counts a node visited through an alias against the bound.
func (d *decoder) visit() error {
	if d.aliasLine == 0 {
		return nil
	}
	d.expanded++
	if d.expanded > d.max {
		return &Error{Line: d.aliasLine, Problem: fmt.Sprintf("document expands to more than %d nodes through aliases", d.max)}
	}
	return nil
}

// through runs f on an alias's target, with the alias accounted for.
func (d *decoder) through(n *yaml.Node, path string, f func(*yaml.Node) error) error {
	t := n.Alias
	if t == nil {
		return &Error{Path: path, Line: n.Line, Problem: fmt.Sprintf("alias *%s has no anchor", n.Value)}
	}
	if d.active[t] {
		return &Error{Path: path, Line: n.Line, Problem: fmt.Sprintf("alias *%s refers to a node that contains it", n.Value)}
	}
	d.active[t] = true
	outer := d.aliasLine == 0
	if outer {
		d.aliasLine = n.Line
	}
	err := f(t)
	if outer {
		d.aliasLine = 0
	}
	delete(d.active, t)
	return err
}

// within runs f with aliasLine set to line when it is not already set:
// values that merge keys bring in are counted as alias expansion.
func (d *decoder) within(line int, f func() error) error {
	if line == 0 || d.aliasLine != 0 {
		return f()
	}
	d.aliasLine = line
	err := f()
	d.aliasLine = 0
	return err
}

// pair is one key and value of a mapping after merge keys resolve.
// aliasLine is set when the pair came through an alias (a merge key
// naming an anchor): decoding its value counts against the bound.
type pair struct {
	key, val  *yaml.Node
	aliasLine int
}

// pairs returns a mapping's keys and values with merge keys resolved:
// the mapping's own keys win over merged ones, and among merged mappings
// the first named wins (YAML's merge key type). A key written twice in one
// mapping is an error.
func (d *decoder) pairs(n *yaml.Node, path string) ([]pair, error) {
	var out []pair
	seen := map[string]bool{}
	var merges []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if err := d.visit(); err != nil {
			return nil, err
		}
		if k.Kind != yaml.ScalarNode {
			return nil, &Error{Path: path, Line: k.Line, Problem: fmt.Sprintf("a key must be a plain value, not %s", kindName(k))}
		}
		if k.Value == "<<" && k.ShortTag() == "!!merge" {
			merges = append(merges, val)
			continue
		}
		if seen[k.Value] {
			first := 0
			for _, p := range out {
				if p.key.Value == k.Value {
					first = p.key.Line
				}
			}
			return nil, &Error{Path: join(path, k.Value), Line: k.Line, Problem: fmt.Sprintf("key repeats the one on line %d", first)}
		}
		seen[k.Value] = true
		out = append(out, pair{key: k, val: val, aliasLine: d.aliasLine})
	}
	for _, m := range merges {
		var err error
		if out, err = d.merge(m, path, out, seen); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// merge adds the pairs of a merge key's value (a mapping, an alias of
// one, or a list of those) that out does not have yet.
func (d *decoder) merge(m *yaml.Node, path string, out []pair, seen map[string]bool) ([]pair, error) {
	if err := d.visit(); err != nil {
		return nil, err
	}
	switch m.Kind {
	case yaml.AliasNode:
		err := d.through(m, path, func(t *yaml.Node) error {
			var err error
			out, err = d.merge(t, path, out, seen)
			return err
		})
		return out, err
	case yaml.MappingNode:
		more, err := d.pairs(m, path)
		if err != nil {
			return nil, err
		}
		for _, p := range more {
			if !seen[p.key.Value] {
				seen[p.key.Value] = true
				out = append(out, p)
			}
		}
		return out, nil
	case yaml.SequenceNode:
		for _, e := range m.Content {
			if e.Kind == yaml.SequenceNode {
				return nil, &Error{Path: path, Line: e.Line, Problem: "<<: a merge list holds mappings, not lists"}
			}
			var err error
			if out, err = d.merge(e, path, out, seen); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return nil, &Error{Path: path, Line: m.Line, Problem: fmt.Sprintf("<<: must be a mapping or a list of mappings, not %s", kindName(m))}
}

// copyOf returns an alias-free copy of n, variables expanded, for types
// that decode themselves. Its size counts against the bound like any
// other expansion.
func (d *decoder) copyOf(n *yaml.Node, path string) (*yaml.Node, error) {
	if err := d.visit(); err != nil {
		return nil, err
	}
	switch n.Kind {
	case yaml.AliasNode:
		var out *yaml.Node
		err := d.through(n, path, func(t *yaml.Node) error {
			var err error
			out, err = d.copyOf(t, path)
			return err
		})
		return out, err
	case yaml.ScalarNode:
		e, err := d.expand(n, path, n.Line)
		if err != nil {
			return nil, err
		}
		cp := *e
		cp.Anchor = ""
		return &cp, nil
	}
	cp := *n
	cp.Anchor = ""
	cp.Content = make([]*yaml.Node, len(n.Content))
	for i, c := range n.Content {
		sub := path
		switch {
		case n.Kind == yaml.SequenceNode:
			sub = fmt.Sprintf("%s[%d]", path, i)
		case n.Kind == yaml.MappingNode && i%2 == 1:
			sub = join(path, n.Content[i-1].Value)
		}
		var err error
		if n.Kind == yaml.MappingNode && i%2 == 0 && c.Kind == yaml.ScalarNode {
			k := *c // keys are not expanded
			k.Anchor = ""
			cp.Content[i] = &k
			continue
		}
		if cp.Content[i], err = d.copyOf(c, sub); err != nil {
			return nil, err
		}
	}
	return &cp, nil
}
