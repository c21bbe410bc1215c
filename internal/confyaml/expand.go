package confyaml

import (
	"fmt"
	"strings"
)

// expandVars replaces ${VAR} and ${VAR:-default} in s and turns $$ into $.
// A $ followed by anything else is kept as written. refs reports whether
// s held a variable reference (its value is then typed afresh). lookup
// says whether a variable is set; `:-` takes the default when the variable
// is unset or empty, as the shell does.
func expandVars(s string, lookup func(string) (string, bool)) (out string, refs bool, err error) {
	if !strings.Contains(s, "$") {
		return s, false, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '$' || i+1 >= len(s) {
			b.WriteByte(c)
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
			continue
		case '{':
		default:
			b.WriteByte(c)
			continue
		}
		end := strings.IndexByte(s[i+2:], '}')
		if end < 0 {
			return "", false, fmt.Errorf("%s has no closing } (write $$ for a literal $)", s[i:])
		}
		ref := s[i+2 : i+2+end]
		name, def, hasDef := strings.Cut(ref, ":-")
		if !validName(name) {
			return "", false, fmt.Errorf("${%s} does not name a variable (letters, digits and _, not starting with a digit; write $$ for a literal $)", ref)
		}
		val, ok := lookup(name)
		switch {
		case hasDef && (!ok || val == ""):
			val = def
		case !ok:
			return "", false, fmt.Errorf("${%s} is not set and has no default", name)
		}
		b.WriteString(val)
		refs = true
		i += 2 + end
	}
	return b.String(), refs, nil
}

func validName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '_', c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}
