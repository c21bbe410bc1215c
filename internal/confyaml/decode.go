package confyaml

import (
	"encoding"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"
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
	keys  map[string][]string
	lines map[string]int
}

// Line returns the line of the key at path (`upstreams[0].lb_policy`), or
// of the nearest enclosing key the document has; 0 when none is known.
// Validation errors, found after decoding, use it to name their line.
func (r *Result) Line(path string) int {
	if r == nil {
		return 0
	}
	for path != "" {
		if l, ok := r.lines[path]; ok {
			return l
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			break
		}
		path = path[:i]
	}
	return 0
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
		res:    &Result{keys: map[string][]string{}, lines: map[string]int{}},
	}
	if d.max <= 0 {
		d.max = DefaultMaxAliasNodes
	}
	if err := d.decode(root, rv.Elem(), "", root.Line); err != nil {
		return nil, err
	}
	return d.res, nil
}

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
		if _, ok := d.res.lines[kp]; !ok {
			d.res.lines[kp] = p.key.Line
		}
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
		ep := fmt.Sprintf("%s[%d]", path, i)
		if _, ok := d.res.lines[ep]; !ok {
			d.res.lines[ep] = c.Line
		}
		if err := d.decode(c, s.Index(i), ep, c.Line); err != nil {
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
