package mtls

import (
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
)

// Actions of an intention or permission.
const (
	Allow = "allow"
	Deny  = "deny"
)

// Intention is one source's rule for the local service, as Consul lists
// them (highest precedence first): an L4 Action, or L7 Permissions.
type Intention struct {
	Source      string // a service name, or "*"
	Action      string // allow | deny; empty when Permissions decide
	Permissions []Permission
}

// Permission is one L7 rule: the first that matches a request decides.
type Permission struct {
	Action     string
	PathExact  string
	PathPrefix string
	PathRegex  *regexp.Regexp
	Methods    []string
	Headers    []HeaderMatch
}

// HeaderMatch is one header condition of a permission.
type HeaderMatch struct {
	Name                  string
	Present               bool
	Exact, Prefix, Suffix string
	Regex                 *regexp.Regexp
	Invert                bool
}

// Policy is the intentions for the local service plus the default when
// none matches (Consul's default intention behaviour).
type Policy struct {
	Destination  string
	Intentions   []Intention
	DefaultAllow bool
}

// Decision is one authorization verdict.
type Decision struct {
	Allowed bool
	Reason  string // the intention or default that decided
}

// match is the intention for source, or nil.
func (p *Policy) match(source string) *Intention {
	for i := range p.Intentions {
		in := &p.Intentions[i]
		if in.Source == source || in.Source == "*" {
			return in
		}
	}
	return nil
}

func (p *Policy) byDefault() Decision {
	if p.DefaultAllow {
		return Decision{Allowed: true, Reason: "default allow"}
	}
	return Decision{Allowed: false, Reason: "default deny"}
}

// Connection authorizes a connection from source (L4). An intention with
// L7 permissions cannot decide a connection: it allows it, and each request
// is then checked (Request).
func (p *Policy) Connection(source string) Decision {
	in := p.match(source)
	if in == nil {
		return p.byDefault()
	}
	if len(in.Permissions) > 0 {
		return Decision{Allowed: true, Reason: "intention " + in.Source + " → " + p.Destination + " (L7)"}
	}
	return Decision{Allowed: in.Action == Allow, Reason: "intention " + in.Source + " → " + p.Destination + ": " + in.Action}
}

// Request authorizes one HTTP request from source, L7 permissions included;
// a request no permission matches gets the default.
func (p *Policy) Request(source string, r *http.Request) Decision {
	in := p.match(source)
	if in == nil {
		return p.byDefault()
	}
	if len(in.Permissions) == 0 {
		return Decision{Allowed: in.Action == Allow, Reason: "intention " + in.Source + " → " + p.Destination + ": " + in.Action}
	}
	for i := range in.Permissions {
		pm := &in.Permissions[i]
		if pm.matches(r) {
			return Decision{Allowed: pm.Action == Allow, Reason: fmt.Sprintf("intention %s → %s permission %d: %s", in.Source, p.Destination, i, pm.Action)}
		}
	}
	return p.byDefault()
}

func (pm *Permission) matches(r *http.Request) bool {
	path := r.URL.Path
	switch {
	case pm.PathExact != "" && path != pm.PathExact:
		return false
	case pm.PathPrefix != "" && !strings.HasPrefix(path, pm.PathPrefix):
		return false
	case pm.PathRegex != nil && !pm.PathRegex.MatchString(path):
		return false
	}
	if len(pm.Methods) > 0 && !slices.ContainsFunc(pm.Methods, func(m string) bool { return strings.EqualFold(m, r.Method) }) {
		return false
	}
	for i := range pm.Headers {
		if !pm.Headers[i].matches(r.Header) {
			return false
		}
	}
	return true
}

func (h *HeaderMatch) matches(hdr http.Header) bool {
	vals, present := hdr[http.CanonicalHeaderKey(h.Name)]
	v := strings.Join(vals, ",")
	var ok bool
	switch {
	case h.Exact != "":
		ok = present && v == h.Exact
	case h.Prefix != "":
		ok = present && strings.HasPrefix(v, h.Prefix)
	case h.Suffix != "":
		ok = present && strings.HasSuffix(v, h.Suffix)
	case h.Regex != nil:
		ok = present && h.Regex.MatchString(v)
	default: // Present, or no condition: the header must be there
		ok = present
	}
	return ok != h.Invert
}

// Authorizer holds the Policy in force; until the first one is set every
// decision is a deny (fail closed). A source that cannot be reached later
// leaves the last policy in force.
type Authorizer struct {
	cur atomic.Pointer[Policy]
}

// Set makes p the policy of every later decision.
func (a *Authorizer) Set(p *Policy) { a.cur.Store(p) }

// Policy is the policy in force, or nil.
func (a *Authorizer) Policy() *Policy { return a.cur.Load() }

// Connection decides a connection from source.
func (a *Authorizer) Connection(source string) Decision {
	p := a.cur.Load()
	if p == nil {
		return Decision{Reason: "no intentions known yet"}
	}
	return p.Connection(source)
}

// Request decides an HTTP request from source.
func (a *Authorizer) Request(source string, r *http.Request) Decision {
	p := a.cur.Load()
	if p == nil {
		return Decision{Reason: "no intentions known yet"}
	}
	return p.Request(source, r)
}
