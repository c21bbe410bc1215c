package confyaml

import (
	"reflect"
	"strings"
	"sync"
)

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
