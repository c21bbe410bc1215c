package file

import (
	"bytes"

	"github.com/sidemesh/sidemesh/internal/confyaml"
)

// scan reads the usual shape of an endpoints file in one pass, without the
// YAML node tree the general decoder builds (for 10,000 endpoints that
// tree and its decoding allocate about 25 MB, which a sidecar's heap then
// keeps until the runtime returns it). It accepts only:
//
//	services:               # a comment
//	  api:
//	    - {address: 127.0.0.1:7001, weight: 1, priority: 0, zone: a}
//	    - address: 127.0.0.1:7002
//	      weight: 3
//
// that is: `services:` at column 0; each service a plain name on its own
// line at one indentation, followed by at least one item deeper; each item
// either a one-line flow mapping or a block mapping whose keys line up
// after "- "; keys among address, weight, priority and zone, each at most
// once; values of letters, digits and . _ : / - (starting with a letter or
// digit, not ending in :), and weight and priority plain decimal integers;
// blank lines and comments anywhere a line may end. Everything else (quotes,
// anchors and aliases, merge keys, tabs, CR, flow lists, empty services,
// documents markers, unknown keys, values YAML would read as null) makes
// ok false, and Parse takes the general decoder, which then also writes
// every error message. What scan accepts it decodes exactly as the general
// decoder does (FuzzParse checks both on every input).
func scan(data []byte) (services map[string][]fileEndpoint, ok bool) {
	if bytes.IndexByte(data, '\r') >= 0 || bytes.IndexByte(data, '\t') >= 0 {
		return nil, false
	}
	services = map[string][]fileEndpoint{}
	var (
		svc     string // the service whose items are being read
		svcInd  = -1   // indentation of the service names
		itemInd = -1   // indentation of the current service's "- "
		inBlock bool   // the last item is a block mapping (more keys may follow)
		sawTop  bool   // `services:` was read
		list    []fileEndpoint
		ints    []int64 // weights and priorities, allocated in chunks
	)
	newInt := func(v int64) *int64 {
		if len(ints) == cap(ints) {
			ints = make([]int64, 0, 256)
		}
		ints = append(ints, v)
		return &ints[len(ints)-1]
	}
	zones := map[string]string{}
	intern := func(b []byte) string {
		if z, ok := zones[string(b)]; ok {
			return z
		}
		z := string(b)
		zones[z] = z
		return z
	}
	// field reads "key: value" at b (a flow mapping's entry or a block
	// mapping's line); it returns what follows the value.
	field := func(ep *fileEndpoint, set *[4]bool, b []byte, flow bool) ([]byte, bool) {
		i := 0
		for i < len(b) && b[i] >= 'a' && b[i] <= 'z' {
			i++
		}
		key := b[:i]
		if i+1 >= len(b) || b[i] != ':' || b[i+1] != ' ' {
			return nil, false
		}
		b = bytes.TrimLeft(b[i+2:], " ")
		j := 0
		for j < len(b) && valueByte(b[j]) {
			j++
		}
		val, rest := b[:j], b[j:]
		if len(val) == 0 || !alnum(val[0]) || val[len(val)-1] == ':' {
			return nil, false
		}
		var k int
		switch string(key) {
		case "address":
			if isNullWord(val) {
				return nil, false
			}
			k, ep.Address = 0, string(val)
		case "weight", "priority":
			n, ok := decimal(val)
			if !ok {
				return nil, false
			}
			if key[0] == 'w' {
				k, ep.Weight = 1, newInt(n)
			} else {
				k, ep.Priority = 2, newInt(n)
			}
		case "zone":
			if isNullWord(val) {
				return nil, false
			}
			k, ep.Zone = 3, intern(val)
		default:
			return nil, false
		}
		if set[k] {
			return nil, false
		}
		set[k] = true
		if flow {
			return bytes.TrimLeft(rest, " "), true
		}
		return rest, endOfLine(rest)
	}
	var set [4]bool // keys of the current block item
	flush := func() {
		if svc != "" {
			services[svc] = list
		}
		list = nil
	}
	line := 0
	for len(data) > 0 {
		line++
		var l []byte
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			l, data = data[:i], data[i+1:]
		} else {
			l, data = data, nil
		}
		body := bytes.TrimLeft(l, " ")
		ind := len(l) - len(body)
		if len(body) == 0 || body[0] == '#' {
			continue // blank or comment
		}
		switch {
		case !sawTop:
			if ind != 0 || !bytes.HasPrefix(body, []byte("services:")) || !endOfLine(body[len("services:"):]) {
				return nil, false
			}
			sawTop = true
		case ind == 0:
			return nil, false // another top-level key, or a document marker
		case svcInd < 0 || ind == svcInd:
			if svcInd >= 0 && len(list) == 0 {
				return nil, false // the previous service has no items
			}
			i := 0
			for i < len(body) && nameByte(body[i]) {
				i++
			}
			if i == 0 || !alnum(body[0]) || i >= len(body) || body[i] != ':' || !endOfLine(body[i+1:]) ||
				isNullWord(body[:i]) {
				return nil, false
			}
			name := string(body[:i])
			if _, dup := services[name]; dup || name == svc {
				return nil, false
			}
			flush()
			svc, svcInd, itemInd, inBlock = name, ind, -1, false
		case ind > svcInd && (itemInd < 0 || ind == itemInd) && len(body) > 1 && body[0] == '-' && body[1] == ' ':
			itemInd, inBlock, set = ind, false, [4]bool{}
			ep := fileEndpoint{Line: confyaml.Line(line)}
			item := body[2:]
			if len(item) > 0 && item[0] == '{' {
				rest := bytes.TrimLeft(item[1:], " ")
				for {
					var ok bool
					if rest, ok = field(&ep, &set, rest, true); !ok {
						return nil, false
					}
					if len(rest) > 0 && rest[0] == ',' {
						rest = bytes.TrimLeft(rest[1:], " ")
						continue
					}
					if len(rest) == 0 || rest[0] != '}' || !endOfLine(rest[1:]) {
						return nil, false
					}
					break
				}
			} else {
				if _, ok := field(&ep, &set, item, false); !ok {
					return nil, false
				}
				inBlock = true
			}
			list = append(list, ep)
		case inBlock && ind == itemInd+2:
			if _, ok := field(&list[len(list)-1], &set, body, false); !ok {
				return nil, false
			}
		default:
			return nil, false
		}
	}
	if !sawTop || svcInd < 0 || len(list) == 0 {
		return nil, false
	}
	flush()
	return services, true
}

// endOfLine reports whether b, what follows a token, ends the line: it is
// empty, or spaces and then nothing or a comment (YAML wants a space
// before the # of a comment).
func endOfLine(b []byte) bool {
	if len(b) == 0 {
		return true
	}
	if b[0] != ' ' {
		return false
	}
	b = bytes.TrimLeft(b, " ")
	return len(b) == 0 || b[0] == '#'
}

func alnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// valueByte: the bytes scan accepts in a plain value.
func valueByte(c byte) bool {
	return alnum(c) || c == '.' || c == '_' || c == ':' || c == '/' || c == '-'
}

// nameByte: the bytes scan accepts in a service name.
func nameByte(c byte) bool { return alnum(c) || c == '.' || c == '_' || c == '-' }

// isNullWord: plain words YAML reads as null (a key or string value the
// general decoder would make empty).
func isNullWord(b []byte) bool {
	switch string(b) {
	case "null", "Null", "NULL":
		return true
	}
	return false
}

// decimal parses a plain decimal integer as YAML reads it in every
// version: 0, or a non-zero digit and at most 17 more digits.
func decimal(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 || b[0] == '0' && len(b) > 1 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}
