package confyaml

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

type hashPolicy struct {
	Header string `yaml:"header"`
}

type lbOptions struct {
	ChoiceCount uint32 `yaml:"choice_count"`
}

type upstream struct {
	Service string         `yaml:"service"`
	Weight  int            `yaml:"weight"`
	Timeout *time.Duration `yaml:"timeout"`
	Connect time.Duration  `yaml:"connect_timeout"`
	Ratio   float64        `yaml:"ratio"`
	On      bool           `yaml:"on"`
	Hash    []hashPolicy   `yaml:"hash_policy"`
	LB      lbOptions      `yaml:",inline"`
	Meta    map[string]int `yaml:"meta"`
	Line    Line           `yaml:"-"`
	hidden  int
}

type doc struct {
	Name      string     `yaml:"name"`
	Port      int        `yaml:"port"`
	Upstreams []upstream `yaml:"upstreams"`
	Templates any        `yaml:"templates"`
}

func decodeDoc(t *testing.T, src string, opts Options) (*doc, *Result, error) {
	t.Helper()
	var d doc
	res, err := Decode([]byte(src), &d, opts)
	return &d, res, err
}

func wantErr(t *testing.T, err error, want string) {
	t.Helper()
	var e *Error
	if err == nil || !errors.As(err, &e) {
		t.Fatalf("err = %v, want *Error %q", err, want)
	}
	if err.Error() != want {
		t.Fatalf("error\n  got  %q\n  want %q", err.Error(), want)
	}
}

func TestErrorsNamePathAndLine(t *testing.T) {
	tests := []struct{ name, src, err string }{
		{"unknown key", "upstreams:\n  - service: a\n    lb_polcy: x\n", "upstreams[0].lb_polcy: unknown key (line 3)"},
		{"unknown top key", "nme: x\n", "nme: unknown key (line 1)"},
		{"int from string", "upstreams:\n  - service: a\n    weight: x\n", `upstreams[0].weight: "x" is not an integer (line 3)`},
		{"int from float", "upstreams:\n  - {service: a, weight: 1.5}\n", `upstreams[0].weight: 1.5 is not an integer (line 2)`},
		{"int from quoted", "port: \"80\"\n", `port: "80" is not an integer (line 1)`},
		{"uint negative", "upstreams:\n  - choice_count: -1\n", "upstreams[0].choice_count: -1 is out of range (0..4294967295) (line 2)"},
		{"uint too big", "upstreams:\n  - choice_count: 4294967296\n", "upstreams[0].choice_count: 4294967296 is out of range (0..4294967295) (line 2)"},
		{"float from string", "upstreams:\n  - ratio: half\n", `upstreams[0].ratio: "half" is not a number (line 2)`},
		{"bool from int", "upstreams:\n  - \"on\": 2\n", "upstreams[0].on: 2 is not true or false (line 2)"},
		{"duration without unit", "upstreams:\n  - service: a\n    timeout: 5\n", "upstreams[0].timeout: 5 is not a duration; give a unit, e.g. 5s (line 3)"},
		{"quoted duration without unit", "upstreams:\n  - connect_timeout: \"2.5\"\n", `upstreams[0].connect_timeout: "2.5" is not a duration; give a unit, e.g. 2.5s (line 2)`},
		{"infinity is not a bare number", "upstreams:\n  - timeout: .inf\n", `upstreams[0].timeout: .inf is not a duration (e.g. 250ms, 5s, 1m30s) (line 2)`},
		{"negative duration without unit", "upstreams:\n  - timeout: -1\n", `upstreams[0].timeout: -1 is not a duration; give a unit, e.g. -1s (line 2)`},
		{"bad duration", "upstreams:\n  - timeout: soon\n", `upstreams[0].timeout: "soon" is not a duration (e.g. 250ms, 5s, 1m30s) (line 2)`},
		{"duration from mapping", "upstreams:\n  - timeout: {s: 1}\n", "upstreams[0].timeout: must be a duration such as 5s, not a mapping (line 2)"},
		{"list for struct", "upstreams:\n  - [1]\n", "upstreams[0]: must be a mapping, not a list (line 2)"},
		{"scalar for list", "upstreams: many\n", `upstreams: must be a list, not "many" (line 1)`},
		{"mapping for string", "name: {a: 1}\n", "name: must be a string, not a mapping (line 1)"},
		{"nested list", "upstreams:\n  - hash_policy:\n      - {heder: x}\n", "upstreams[0].hash_policy[0].heder: unknown key (line 3)"},
		{"map value", "upstreams:\n  - meta: {a: 1, b: two}\n", `upstreams[0].meta.b: "two" is not an integer (line 2)`},
		{"repeated key", "name: a\nport: 1\nname: b\n", "name: key repeats the one on line 1 (line 3)"},
		{"top level scalar", "hello\n", `must be a mapping, not "hello" (line 1)`},
		{"syntax", "upstreams:\n  - [\n", "did not find expected node content (line 2)"},
		{"unexported field is no key", "upstreams:\n  - hidden: 1\n", "upstreams[0].hidden: unknown key (line 2)"},
		{"merge of a scalar", "upstreams:\n  - <<: 3\n", "upstreams[0]: <<: must be a mapping or a list of mappings, not 3 (line 2)"},
		// inside an alias, the line is where the bad text is; the path is where it is used
		{"type error inside an alias", "templates: &t {weight: x}\nupstreams:\n  - *t\n", `upstreams[0].weight: "x" is not an integer (line 1)`},
		{"alias of the wrong kind", "templates: &t [1]\nupstreams:\n  - *t\n", `upstreams[0]: must be a mapping, not a list (line 3)`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := decodeDoc(t, tc.src, Options{})
			wantErr(t, err, tc.err)
		})
	}
}

func TestEmpty(t *testing.T) {
	for _, src := range []string{"", "# only a comment\n", "\n\n"} {
		if _, _, err := decodeDoc(t, src, Options{}); !errors.Is(err, ErrEmpty) {
			t.Fatalf("%q: err = %v, want ErrEmpty", src, err)
		}
	}
}

func TestAnchorsAliasesAndMergeKeys(t *testing.T) {
	src := `
templates:
  base: &base
    timeout: 2s
    weight: 3
    hash_policy: &hp [{header: x-user}]
  fast: &fast
    timeout: 250ms
    choice_count: 4
upstreams:
  - <<: *base
    service: a
  - <<: [*fast, *base]
    service: b
    weight: 7
  - service: c
    hash_policy: *hp
  - &d
    service: d
  - *d
`
	d, res, err := decodeDoc(t, src, Options{})
	if err != nil {
		t.Fatal(err)
	}
	u := d.Upstreams
	if len(u) != 5 {
		t.Fatalf("upstreams: %d", len(u))
	}
	if u[0].Service != "a" || *u[0].Timeout != 2*time.Second || u[0].Weight != 3 || len(u[0].Hash) != 1 || u[0].Hash[0].Header != "x-user" {
		t.Fatalf("upstreams[0] = %+v", u[0])
	}
	// the first merged mapping wins over later ones; own keys win over all
	if u[1].Service != "b" || *u[1].Timeout != 250*time.Millisecond || u[1].Weight != 7 || u[1].LB.ChoiceCount != 4 || len(u[1].Hash) != 1 {
		t.Fatalf("upstreams[1] = %+v", u[1])
	}
	if u[2].Hash[0].Header != "x-user" || u[4].Service != "d" {
		t.Fatalf("aliases: %+v %+v", u[2], u[4])
	}
	// Line is where the upstream is used: the alias's own line for upstreams[4]
	if u[0].Line != 11 || u[3].Line != 18 || u[4].Line != 20 {
		t.Fatalf("lines %d %d %d, want 11 18 20", u[0].Line, u[3].Line, u[4].Line)
	}
	if got := res.Keys("upstreams[0]"); !reflect.DeepEqual(got, []string{"service", "timeout", "weight", "hash_policy"}) {
		t.Fatalf("keys of upstreams[0] = %v", got)
	}
	if got := res.Keys("upstreams[1]"); !reflect.DeepEqual(got, []string{"service", "weight", "timeout", "choice_count", "hash_policy"}) {
		t.Fatalf("keys of upstreams[1] = %v", got)
	}
	if got := res.Keys(""); !reflect.DeepEqual(got, []string{"templates", "upstreams"}) {
		t.Fatalf("top keys = %v", got)
	}
}

// nestedAliases builds the "billion laughs" shape: levels anchors, each a
// list of width aliases of the one before.
func nestedAliases(levels, width int) string {
	var b strings.Builder
	b.WriteString("templates:\n  l0: &l0 [{weight: 1}]\n")
	for i := 1; i <= levels; i++ {
		refs := make([]string, width)
		for j := range refs {
			refs[j] = fmt.Sprintf("*l%d", i-1)
		}
		fmt.Fprintf(&b, "  l%d: &l%d [%s]\n", i, i, strings.Join(refs, ", "))
	}
	fmt.Fprintf(&b, "upstreams: *l%d\n", levels)
	return b.String()
}

func TestAliasExpansionBound(t *testing.T) {
	src := nestedAliases(9, 9) // 9^9 nodes once expanded
	if len(src) > 1000 {
		t.Fatalf("bomb is %d bytes; the point is that it is small", len(src))
	}
	_, _, err := decodeDoc(t, src, Options{})
	var e *Error
	if !errors.As(err, &e) || e.Problem != fmt.Sprintf("document expands to more than %d nodes through aliases", DefaultMaxAliasNodes) || e.Path != "" || e.Line < 3 || e.Line > 12 {
		t.Fatalf("err = %v, want the bound passed at an alias on lines 3..12", err)
	}

	// Merge keys are bounded the same way.
	var b strings.Builder
	b.WriteString("templates:\n  m0: &m0 {weight: 1}\n")
	for i := 1; i <= 30; i++ {
		fmt.Fprintf(&b, "  m%d: &m%d {<<: [*m%d, *m%d, *m%d]}\n", i, i, i-1, i-1, i-1)
	}
	b.WriteString("upstreams: [*m30]\n")
	var m struct {
		Templates map[string]upstream `yaml:"templates"`
		Upstreams []upstream          `yaml:"upstreams"`
	}
	_, err = Decode([]byte(b.String()), &m, Options{MaxAliasNodes: 1000})
	if !errors.As(err, &e) || e.Problem != "document expands to more than 1000 nodes through aliases" || e.Line < 3 || e.Line > 33 {
		t.Fatalf("merge keys: err = %v, want the bound passed at an alias on lines 3..33", err)
	}

	// Under the bound the same shape decodes.
	var small struct {
		Templates any              `yaml:"templates"`
		Upstreams [][][][]upstream `yaml:"upstreams"`
	}
	if _, err := Decode([]byte(nestedAliases(3, 3)), &small, Options{}); err != nil || len(small.Upstreams) != 3 || small.Upstreams[2][2][2][0].Weight != 1 {
		t.Fatalf("small expansion: %v, %v", err, small.Upstreams)
	}
}

func TestAliasCycle(t *testing.T) {
	_, _, err := decodeDoc(t, "templates: &a {x: *a}\n", Options{})
	if err == nil || !strings.Contains(err.Error(), "refers to a node that contains it") {
		t.Fatalf("err = %v", err)
	}
	_, _, err = decodeDoc(t, "upstreams:\n  - &u {<<: *u}\n", Options{})
	wantErr(t, err, "upstreams[0]: alias *u refers to a node that contains it (line 2)")
}

func env(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
}

func TestExpansion(t *testing.T) {
	vars := env(map[string]string{"NAME": "api", "PORT": "8080", "EMPTY": "", "T": "3s"})
	src := "name: ${NAME}-$${HOME}-${MISSING:-x}\nport: ${PORT}\nupstreams:\n  - service: \"${EMPTY:-dflt}\"\n    timeout: ${T}\n    weight: \"${PORT}\"\n"
	d, _, err := decodeDoc(t, src, Options{Lookup: vars})
	if err != nil {
		t.Fatal(err)
	}
	if d.Name != "api-${HOME}-x" || d.Port != 8080 || d.Upstreams[0].Service != "dflt" || *d.Upstreams[0].Timeout != 3*time.Second || d.Upstreams[0].Weight != 8080 {
		t.Fatalf("expanded: %+v %+v", d, d.Upstreams[0])
	}
	// without Lookup nothing expands
	d, _, err = decodeDoc(t, "name: ${NAME}\n", Options{})
	if err != nil || d.Name != "${NAME}" {
		t.Fatalf("no lookup: %v %q", err, d.Name)
	}
	// a $ not followed by { or $ stays
	d, _, err = decodeDoc(t, "name: ^/a$|b$c\n", Options{Lookup: vars})
	if err != nil || d.Name != "^/a$|b$c" {
		t.Fatalf("lone $: %v %q", err, d.Name)
	}
	// keys are not expanded
	d, _, err = decodeDoc(t, "upstreams:\n  - meta:\n      ${NAME}: 1\n", Options{Lookup: vars})
	if err != nil || d.Upstreams[0].Meta["${NAME}"] != 1 {
		t.Fatalf("keys: %v %v", err, d.Upstreams[0].Meta)
	}
	// values reached through aliases and taken by `any` fields expand too
	d, _, err = decodeDoc(t, "templates:\n  a: &p ${PORT}\n  b:\n    - ${NAME}\nport: *p\n", Options{Lookup: vars})
	if err != nil || d.Port != 8080 || !reflect.DeepEqual(d.Templates, map[string]any{"a": 8080, "b": []any{"api"}}) {
		t.Fatalf("alias/any: %v %d %#v", err, d.Port, d.Templates)
	}

	bad := []struct{ src, err string }{
		{"name: x\nport: ${NOPE}\n", "port: ${NOPE} is not set and has no default (line 2)"},
		{"upstreams:\n  - service: a\n    timeout: ${NOPE}\n", "upstreams[0].timeout: ${NOPE} is not set and has no default (line 3)"},
		{"name: ${NAME\n", "name: ${NAME has no closing } (write $$ for a literal $) (line 1)"},
		{"name: a${}b\n", "name: ${} does not name a variable (letters, digits and _, not starting with a digit; write $$ for a literal $) (line 1)"},
		{"port: ${NAME}\n", `port: "api" is not an integer (line 1)`},
		{"templates:\n  x:\n    - ${NOPE}\n", "templates.x[0]: ${NOPE} is not set and has no default (line 3)"},
	}
	for _, tc := range bad {
		_, _, err := decodeDoc(t, tc.src, Options{Lookup: vars})
		wantErr(t, err, tc.err)
	}
}

func TestExpandVars(t *testing.T) {
	vars := env(map[string]string{"A": "1", "E": ""})
	tests := []struct {
		in, out string
		refs    bool
	}{
		{"plain", "plain", false},
		{"$$", "$", false},
		{"$$$$A", "$$A", false},
		{"$A", "$A", false},
		{"x$", "x$", false},
		{"${A}${A}", "11", true},
		{"${E:-d}", "d", true},
		{"${E}", "", true},
		{"${U:-}", "", true},
		{"${U:-a:-b}", "a:-b", true},
		{"$${A}", "${A}", false},
	}
	for _, tc := range tests {
		out, refs, err := expandVars(tc.in, vars)
		if err != nil || out != tc.out || refs != tc.refs {
			t.Errorf("expandVars(%q) = %q, %v, %v; want %q, %v", tc.in, out, refs, err, tc.out, tc.refs)
		}
	}
	for _, in := range []string{"${U}", "${", "${1A}", "${A B}"} {
		if _, _, err := expandVars(in, vars); err == nil {
			t.Errorf("expandVars(%q) accepted", in)
		}
	}
}

func TestDecodeNeedsPointer(t *testing.T) {
	var d doc
	if _, err := Decode([]byte("name: x\n"), d, Options{}); err == nil {
		t.Fatal("accepted a non-pointer")
	}
}

func BenchmarkAliasBomb(b *testing.B) {
	src := []byte(nestedAliases(9, 9))
	for b.Loop() {
		var d doc
		if _, err := Decode(src, &d, Options{}); err == nil {
			b.Fatal("accepted")
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte("name: a\nport: 80\nupstreams:\n  - {service: a, weight: 2, timeout: 1s, meta: {x: 1}}\n"))
	f.Add([]byte("templates: &t {weight: 3}\nupstreams:\n  - <<: *t\n    service: b\n  - *t\n"))
	f.Add([]byte("name: ${NAME:-x}-$$\nport: ${PORT}\n"))
	f.Add([]byte("upstreams: &u [*u]\n"))
	f.Add([]byte(nestedAliases(5, 5)))
	lookup := env(map[string]string{"NAME": "n", "PORT": "1"})
	f.Fuzz(func(t *testing.T, data []byte) {
		var d doc
		_, err := Decode(data, &d, Options{Lookup: lookup, MaxAliasNodes: 5000})
		var e *Error
		if err != nil && !errors.Is(err, ErrEmpty) && !errors.As(err, &e) {
			t.Fatalf("error is neither *Error nor ErrEmpty: %v", err)
		}
		if e != nil && e.Problem == "" {
			t.Fatalf("error without a problem: %#v", e)
		}
	})
}
