package upstream

import (
	"reflect"
	"strings"
)

// Merge returns the effective settings of an upstream that has settings of
// its own (local, from the sidecar's file, defaults filled) and settings
// from the control plane (remote, decoded from CDS). The rule, per key: a
// key the file set (isSet reports true for its YAML key) keeps local's
// value; every other key takes remote's value where remote carries one (a
// non-zero value), and local's otherwise. Keys of inline sections
// (least_request_lb_config, ring_hash_lb_config) are keys of their own;
// a section without a file key (maglev_lb_config) always takes remote's
// value when there is one. A nil isSet means the file set nothing.
//
// The result shares pointers with local and remote; neither may be
// modified afterwards.
func Merge(local, remote Settings, isSet func(key string) bool) Settings {
	if isSet == nil {
		isSet = func(string) bool { return false }
	}
	out := local
	mergeFields(reflect.ValueOf(&out).Elem(), reflect.ValueOf(remote), isSet)
	return out
}

func mergeFields(dst, src reflect.Value, isSet func(string) bool) {
	t := dst.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if strings.Contains(opts, "inline") {
			mergeFields(dst.Field(i), src.Field(i), isSet)
			continue
		}
		if name == "-" {
			name, _, _ = strings.Cut(f.Tag.Get("json"), ",")
		}
		if isSet(name) || src.Field(i).IsZero() {
			continue
		}
		dst.Field(i).Set(src.Field(i))
	}
}
