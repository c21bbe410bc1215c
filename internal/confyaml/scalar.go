package confyaml

import (
	"fmt"
	"math"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// bareNumber is a decimal number without a unit: `5`, `-1.5`, `.5`, `1e3`.
var bareNumber = regexp.MustCompile(`^[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?$`)

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// kindName names what a node is, for "must be X, not Y" messages.
func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias (*" + n.Value + ")"
	case yaml.ScalarNode:
		return show(n)
	}
	return "a document"
}

// show prints a scalar as written: strings quoted, numbers and booleans bare.
func show(n *yaml.Node) string {
	if n.Kind != yaml.ScalarNode {
		return kindName(n)
	}
	if n.ShortTag() == "!!str" {
		return strconv.Quote(n.Value)
	}
	return n.Value
}

// expand returns n with variables expanded (n itself when there are none
// or expansion is off). A value that referred to a variable is typed
// afresh, as if written plain.
func (d *decoder) expand(n *yaml.Node, path string, at int) (*yaml.Node, error) {
	if d.lookup == nil || n.Kind != yaml.ScalarNode || !strings.Contains(n.Value, "$") {
		return n, nil
	}
	s, refs, err := expandVars(n.Value, d.lookup)
	if err != nil {
		return nil, &Error{Path: path, Line: at, Problem: err.Error()}
	}
	out := &yaml.Node{Kind: yaml.ScalarNode, Value: s, Line: n.Line, Column: n.Column}
	if !refs {
		out.Tag, out.Style = n.Tag, n.Style
	}
	return out, nil
}

// resolved returns a scalar's YAML value: nil, bool, int, int64, uint64,
// float64 or string, as yaml.v3 resolves it.
func resolved(n *yaml.Node) (any, error) {
	var x any
	err := n.Decode(&x)
	return x, err
}

func (d *decoder) scalar(n *yaml.Node, v reflect.Value, path string, at int) error {
	want := map[reflect.Kind]string{
		reflect.Bool: "true or false", reflect.String: "a string",
		reflect.Float32: "a number", reflect.Float64: "a number",
	}[v.Kind()]
	if want == "" {
		want = "an integer"
	}
	if n.Kind != yaml.ScalarNode {
		return &Error{Path: path, Line: at, Problem: fmt.Sprintf("must be %s, not %s", want, kindName(n))}
	}
	n, err := d.expand(n, path, at)
	if err != nil {
		return err
	}
	if v.Kind() == reflect.String {
		v.SetString(n.Value)
		return nil
	}
	x, err := resolved(n)
	if err != nil {
		return fromYAML(err, path, at)
	}
	if x == nil { // an expanded value can turn out null
		v.Set(reflect.Zero(v.Type()))
		return nil
	}
	bad := &Error{Path: path, Line: at, Problem: fmt.Sprintf("%s is not %s", show(n), want)}
	switch v.Kind() {
	case reflect.Bool:
		switch x := x.(type) {
		case bool:
			v.SetBool(x)
			return nil
		case string:
			// YAML 1.1 booleans in plain style, as yaml.v3 accepts them.
			if n.Style == 0 || n.Style == yaml.TaggedStyle {
				switch x {
				case "y", "Y", "yes", "Yes", "YES", "on", "On", "ON":
					v.SetBool(true)
					return nil
				case "n", "N", "no", "No", "NO", "off", "Off", "OFF":
					v.SetBool(false)
					return nil
				}
			}
		}
		return bad
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		var i int64
		switch x := x.(type) {
		case int:
			i = int64(x)
		case int64:
			i = x
		case uint64:
			return outOfRange(n, v, path, at)
		default:
			return bad
		}
		if v.OverflowInt(i) {
			return outOfRange(n, v, path, at)
		}
		v.SetInt(i)
		return nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		var u uint64
		switch x := x.(type) {
		case int:
			if x < 0 {
				return outOfRange(n, v, path, at)
			}
			u = uint64(x)
		case int64:
			if x < 0 {
				return outOfRange(n, v, path, at)
			}
			u = uint64(x)
		case uint64:
			u = x
		default:
			return bad
		}
		if v.OverflowUint(u) {
			return outOfRange(n, v, path, at)
		}
		v.SetUint(u)
		return nil
	case reflect.Float32, reflect.Float64:
		var f float64
		switch x := x.(type) {
		case int:
			f = float64(x)
		case int64:
			f = float64(x)
		case uint64:
			f = float64(x)
		case float64:
			f = x
		default:
			return bad
		}
		if v.OverflowFloat(f) {
			return outOfRange(n, v, path, at)
		}
		v.SetFloat(f)
		return nil
	}
	return &Error{Path: path, Line: at, Problem: fmt.Sprintf("cannot hold a value (Go type %s)", v.Type())}
}

func outOfRange(n *yaml.Node, v reflect.Value, path string, at int) error {
	var lo, hi string
	switch v.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		bits := v.Type().Bits()
		lo, hi = strconv.FormatInt(-1<<(bits-1), 10), strconv.FormatInt(1<<(bits-1)-1, 10)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		lo, hi = "0", strconv.FormatUint(math.MaxUint64>>(64-v.Type().Bits()), 10)
	default:
		return &Error{Path: path, Line: at, Problem: fmt.Sprintf("%s is out of range", show(n))}
	}
	return &Error{Path: path, Line: at, Problem: fmt.Sprintf("%s is out of range (%s..%s)", show(n), lo, hi)}
}

func (d *decoder) duration(n *yaml.Node, v reflect.Value, path string, at int) error {
	if n.Kind != yaml.ScalarNode {
		return &Error{Path: path, Line: at, Problem: fmt.Sprintf("must be a duration such as 5s, not %s", kindName(n))}
	}
	n, err := d.expand(n, path, at)
	if err != nil {
		return err
	}
	s := strings.TrimSpace(n.Value)
	if bareNumber.MatchString(s) {
		return &Error{Path: path, Line: at, Problem: fmt.Sprintf("%s is not a duration; give a unit, e.g. %ss", show(n), s)}
	}
	dur, err := time.ParseDuration(s)
	if err != nil {
		return &Error{Path: path, Line: at, Problem: fmt.Sprintf("%s is not a duration (e.g. 250ms, 5s, 1m30s)", show(n))}
	}
	v.SetInt(int64(dur))
	return nil
}
