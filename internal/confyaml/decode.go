package confyaml

import (
	"encoding"
	"errors"
	"fmt"
	"math"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"gopkg.in/yaml.v3"
)

// DefaultMaxAliasNodes bounds the nodes visited through aliases and merge
// keys when Options.MaxAliasNodes is 0. A config that reuses a block of
// settings for a few hundred upstreams stays far below it; a file built to
// expand exponentially passes it after a few milliseconds of work.
const DefaultMaxAliasNodes = 100_000

// ErrEmpty is returned for a document with no content (nothing, or only
// comments).
var ErrEmpty = errors.New("empty document")

// Error is a problem at one place in the document.
type Error struct {
	// Path is the key path, e.g. `upstreams[0].timeout`; empty when the
	// problem concerns the whole document.
	Path string
	// Line is the 1-based line in the file as written (0 when unknown).
	Line int
	// Problem says what is wrong, e.g. `unknown key`.
	Problem string
}

func (e *Error) Error() string {
	s := e.Problem
	if e.Path != "" {
		s = e.Path + ": " + s
	}
	if e.Line > 0 {
		s += fmt.Sprintf(" (line %d)", e.Line)
	}
	return s
}

// Line, as the type of a struct field, receives the line of the mapping
// the struct is decoded from: where it appears in the document, which for
// an alias is the alias's own line. Tag such a field `yaml:"-"`; it is
// never read from a key.
type Line int

// Options tune Decode.
type Options struct {
	// MaxAliasNodes bounds the nodes visited through aliases and merge
	// keys; 0 means DefaultMaxAliasNodes.
	MaxAliasNodes int
	// Lookup, when set, turns on ${VAR} and ${VAR:-default} expansion in
	// scalar values (not keys); it reports a variable's value and whether
	// it is set (os.LookupEnv).
	Lookup func(name string) (string, bool)
}

// Result tells what the document held beyond the decoded values.
type Result struct {
	keys map[string][]string
}

// Keys returns the keys, in document order, of the mapping decoded at
// path (`upstreams[0]`; "" is the top level), keys brought in by merge
// keys included. It is nil when no mapping was decoded there.
func (r *Result) Keys(path string) []string {
	if r == nil {
		return nil
	}
	return r.keys[path]
}

// Decode parses the first YAML document in data and decodes it into v,
// which must be a non-nil pointer. Errors are *Error, ErrEmpty, or (for a
// bad v) a plain error.
func Decode(data []byte, v any, opts Options) (*Result, error) {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return nil, fmt.Errorf("confyaml: Decode needs a non-nil pointer, got %T", v)
	}
	root, err := parse(data)
	if err != nil {
		return nil, err
	}
	d := &decoder{
		max:    opts.MaxAliasNodes,
		lookup: opts.Lookup,
		active: map[*yaml.Node]bool{},
		res:    &Result{keys: map[string][]string{}},
	}
	if d.max <= 0 {
		d.max = DefaultMaxAliasNodes
	}
	if err := d.decode(root, rv.Elem(), "", root.Line); err != nil {
		return nil, err
	}
	return d.res, nil
}

// bareNumber is a decimal number without a unit: `5`, `-1.5`, `.5`, `1e3`.
var bareNumber = regexp.MustCompile(`^[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?$`)

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): `)

// parse reads the node tree of the first document. yaml.v3 keeps aliases
// as pointers to their anchors here; nothing is expanded yet.
func parse(data []byte) (*yaml.Node, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		msg := err.Error()
		if m := yamlLine.FindStringSubmatch(msg); m != nil {
			line, _ := strconv.Atoi(m[1])
			return nil, &Error{Line: line, Problem: msg[len(m[0]):]}
		}
		return nil, &Error{Problem: strings.TrimPrefix(msg, "yaml: ")}
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return nil, ErrEmpty
	}
	return doc.Content[0], nil
}

type decoder struct {
	max      int
	expanded int
	// aliasLine is the line of the outermost alias being expanded, 0
	// when the decoder is on nodes of the document as written.
	aliasLine int
	active    map[*yaml.Node]bool // alias targets being expanded (cycles)
	lookup    func(string) (string, bool)
	res       *Result
}

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

var (
	durationType    = reflect.TypeOf(time.Duration(0))
	lineType        = reflect.TypeOf(Line(0))
	unmarshalerType = reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem()
	textType        = reflect.TypeOf((*encoding.TextUnmarshaler)(nil)).Elem()
)

// decode decodes n into v. at is the line to report for n as a whole:
// n's own line, or the line of the alias that led to it.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string, at int) error {
	if err := d.visit(); err != nil {
		return err
	}
	if n.Kind == yaml.AliasNode {
		return d.through(n, path, func(t *yaml.Node) error { return d.decode(t, v, path, n.Line) })
	}
	for v.Kind() == reflect.Pointer {
		if isNull(n) {
			v.Set(reflect.Zero(v.Type()))
			return nil
		}
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		v = v.Elem()
	}
	if v.CanAddr() && v.Addr().Type().Implements(unmarshalerType) {
		cp, err := d.copyOf(n, path)
		if err != nil {
			return err
		}
		if err := v.Addr().Interface().(yaml.Unmarshaler).UnmarshalYAML(cp); err != nil {
			return fromYAML(err, path, at)
		}
		return nil
	}
	if isNull(n) {
		v.Set(reflect.Zero(v.Type()))
		return nil
	}
	if v.Type() == durationType {
		return d.duration(n, v, path, at)
	}
	if n.Kind == yaml.ScalarNode && v.CanAddr() && v.Addr().Type().Implements(textType) {
		s, err := d.expand(n, path, at)
		if err != nil {
			return err
		}
		if err := v.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(s.Value)); err != nil {
			return &Error{Path: path, Line: at, Problem: fmt.Sprintf("%s: %v", show(s), err)}
		}
		return nil
	}
	switch v.Kind() {
	case reflect.Struct:
		return d.structure(n, v, path, at)
	case reflect.Map:
		return d.mapping(n, v, path, at)
	case reflect.Slice:
		return d.sequence(n, v, path, at)
	case reflect.Array:
		return d.array(n, v, path, at)
	case reflect.Interface:
		cp, err := d.copyOf(n, path)
		if err != nil {
			return err
		}
		if err := cp.Decode(v.Addr().Interface()); err != nil {
			return fromYAML(err, path, at)
		}
		return nil
	default:
		return d.scalar(n, v, path, at)
	}
}

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
	}
	return show(n)
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

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func (d *decoder) structure(n *yaml.Node, v reflect.Value, path string, at int) error {
	if n.Kind != yaml.MappingNode {
		return &Error{Path: path, Line: at, Problem: fmt.Sprintf("must be a mapping, not %s", kindName(n))}
	}
	info := fieldsOf(v.Type())
	ps, err := d.pairs(n, path)
	if err != nil {
		return err
	}
	keys := make([]string, 0, len(ps))
	var rest reflect.Value // the ,inline map, made on first use
	for _, p := range ps {
		name := p.key.Value
		keys = append(keys, name)
		kp := join(path, name)
		f, ok := info.byName[name]
		if !ok {
			if info.inlineMap == nil {
				return &Error{Path: kp, Line: p.key.Line, Problem: "unknown key"}
			}
			if !rest.IsValid() {
				rest = fieldAt(v, info.inlineMap)
				if rest.IsNil() {
					rest.Set(reflect.MakeMap(rest.Type()))
				}
			}
			if err := d.within(p.aliasLine, func() error { return d.mapEntry(p, rest, kp) }); err != nil {
				return err
			}
			continue
		}
		fv := fieldAt(v, f)
		if err := d.within(p.aliasLine, func() error { return d.decode(p.val, fv, kp, p.val.Line) }); err != nil {
			return err
		}
	}
	for _, idx := range info.lines {
		fieldAt(v, idx).SetInt(int64(at))
	}
	d.record(path, keys)
	return nil
}

func (d *decoder) record(path string, keys []string) {
	if _, ok := d.res.keys[path]; !ok {
		d.res.keys[path] = keys
	}
}

func (d *decoder) mapping(n *yaml.Node, v reflect.Value, path string, at int) error {
	if n.Kind != yaml.MappingNode {
		return &Error{Path: path, Line: at, Problem: fmt.Sprintf("must be a mapping, not %s", kindName(n))}
	}
	ps, err := d.pairs(n, path)
	if err != nil {
		return err
	}
	if v.IsNil() {
		v.Set(reflect.MakeMapWithSize(v.Type(), len(ps)))
	}
	keys := make([]string, 0, len(ps))
	for _, p := range ps {
		keys = append(keys, p.key.Value)
		if err := d.within(p.aliasLine, func() error { return d.mapEntry(p, v, join(path, p.key.Value)) }); err != nil {
			return err
		}
	}
	d.record(path, keys)
	return nil
}

func (d *decoder) mapEntry(p pair, m reflect.Value, kp string) error {
	k := reflect.New(m.Type().Key()).Elem()
	if err := d.decodeKey(p.key, k, kp); err != nil {
		return err
	}
	e := reflect.New(m.Type().Elem()).Elem()
	if err := d.decode(p.val, e, kp, p.val.Line); err != nil {
		return err
	}
	m.SetMapIndex(k, e)
	return nil
}

// decodeKey decodes a mapping key (never expanded) into k.
func (d *decoder) decodeKey(n *yaml.Node, k reflect.Value, kp string) error {
	lookup := d.lookup
	d.lookup = nil
	defer func() { d.lookup = lookup }()
	if err := d.decode(n, k, kp, n.Line); err != nil {
		var e *Error
		if errors.As(err, &e) {
			e.Problem = "key " + e.Problem
		}
		return err
	}
	return nil
}

func (d *decoder) sequence(n *yaml.Node, v reflect.Value, path string, at int) error {
	if n.Kind != yaml.SequenceNode {
		return &Error{Path: path, Line: at, Problem: fmt.Sprintf("must be a list, not %s", kindName(n))}
	}
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, c := range n.Content {
		if err := d.decode(c, s.Index(i), fmt.Sprintf("%s[%d]", path, i), c.Line); err != nil {
			return err
		}
	}
	v.Set(s)
	return nil
}

func (d *decoder) array(n *yaml.Node, v reflect.Value, path string, at int) error {
	if n.Kind != yaml.SequenceNode || len(n.Content) != v.Len() {
		return &Error{Path: path, Line: at, Problem: fmt.Sprintf("must be a list of %d, not %s", v.Len(), kindName(n))}
	}
	for i, c := range n.Content {
		if err := d.decode(c, v.Index(i), fmt.Sprintf("%s[%d]", path, i), c.Line); err != nil {
			return err
		}
	}
	return nil
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

var lineInMsg = regexp.MustCompile(`^line (\d+): `)

// fromYAML turns an error from yaml.v3 or a custom unmarshaler into an
// *Error at path, taking the line from the message when it has one.
func fromYAML(err error, path string, at int) error {
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	msg := err.Error()
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		msg = te.Errors[0]
	}
	msg = strings.TrimPrefix(msg, "yaml: ")
	line := at
	if m := lineInMsg.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = msg[len(m[0]):]
	}
	return &Error{Path: path, Line: line, Problem: msg}
}

// structInfo is how a struct type's fields map to keys.
type structInfo struct {
	byName    map[string][]int
	inlineMap []int   // a `,inline` map field taking unknown keys
	lines     [][]int // fields of type Line
}

var infoCache sync.Map // reflect.Type → *structInfo

// fieldsOf maps YAML keys to field index paths the way yaml.v3 does: the
// `yaml` tag's name, else the lowercased field name; `-` skips a field;
// `,inline` structs (or pointers to structs) lend their keys.
func fieldsOf(t reflect.Type) *structInfo {
	if si, ok := infoCache.Load(t); ok {
		return si.(*structInfo)
	}
	si := &structInfo{byName: map[string][]int{}}
	collectFields(t, nil, si)
	infoCache.Store(t, si)
	return si
}

func collectFields(t reflect.Type, prefix []int, si *structInfo) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		idx := append(append([]int(nil), prefix...), i)
		if f.Type == lineType {
			si.lines = append(si.lines, idx)
			continue
		}
		if f.PkgPath != "" && !f.Anonymous {
			continue // unexported
		}
		tag := f.Tag.Get("yaml")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		inline := false
		for _, o := range strings.Split(opts, ",") {
			inline = inline || o == "inline"
		}
		if inline {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			switch ft.Kind() {
			case reflect.Struct:
				collectFields(ft, idx, si)
				continue
			case reflect.Map:
				if si.inlineMap == nil {
					si.inlineMap = idx
				}
				continue
			}
		}
		if f.PkgPath != "" {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		if _, dup := si.byName[name]; !dup {
			si.byName[name] = idx
		}
	}
}

// fieldAt returns the field at an index path, allocating nil pointers to
// inline structs on the way.
func fieldAt(v reflect.Value, idx []int) reflect.Value {
	for i, x := range idx {
		if i > 0 {
			if v.Kind() == reflect.Pointer {
				if v.IsNil() {
					v.Set(reflect.New(v.Type().Elem()))
				}
				v = v.Elem()
			}
		}
		v = v.Field(x)
	}
	return v
}

// Fields returns the keys a struct type takes (inline structs' keys
// included) and the Go type each decodes into, as Decode sees them.
func Fields(t reflect.Type) map[string]reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	out := map[string]reflect.Type{}
	if t.Kind() != reflect.Struct {
		return out
	}
	for name, idx := range fieldsOf(t).byName {
		f := t
		var ft reflect.Type
		for _, x := range idx {
			for f.Kind() == reflect.Pointer {
				f = f.Elem()
			}
			ft = f.Field(x).Type
			f = ft
		}
		out[name] = ft
	}
	return out
}
