package config

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// decode sets v from the YAML node n as yaml.v3 does (sections merge over
// the values already in v, lists replace them, anchors and merge keys work),
// refusing unknown keys, but walks the document itself so that an error
// names the key it is about: the YAML decoder's own errors give only a line
// ("line 22: cannot unmarshal !!str `banana` into time.Duration"), and a
// flow mapping puts a whole section on one line. Leaves are decoded by
// yaml.v3 itself, so they keep its rules.
func decode(n *yaml.Node, v reflect.Value, path string) error {
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return nil
		}
		n = n.Content[0]
	}
	n = resolve(n)
	if _, ok := v.Addr().Interface().(yaml.Unmarshaler); !ok {
		switch {
		case n.Kind == yaml.MappingNode && v.Kind() == reflect.Struct:
			return decodeStruct(n, v, path, nil)
		case n.Kind == yaml.SequenceNode && v.Kind() == reflect.Slice:
			s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
			for i, e := range n.Content {
				if err := decode(e, s.Index(i), fmt.Sprintf("%s[%d]", path, i)); err != nil {
					return err
				}
			}
			v.Set(s)
			return nil
		}
	}
	if err := checkLeaf(n, v); err != nil {
		return keyError(path, err)
	}
	if err := n.Decode(v.Addr().Interface()); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) && len(te.Errors) > 0 {
			err = leafError(n, v.Type(), te.Errors[0])
		}
		return keyError(path, err)
	}
	return nil
}

// decodeStruct decodes a mapping into a struct. As in yaml.v3, a merge key
// ("<<") sets only the keys the mapping does not give itself; skip holds the
// keys given by the mappings this one is merged into.
func decodeStruct(n *yaml.Node, v reflect.Value, path string, skip map[string]bool) error {
	fields := yamlFields(v.Type())
	own := map[string]bool{}
	for k := range skip {
		own[k] = true
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		if k.ShortTag() == "!!merge" {
			continue
		}
		key := join(path, k.Value)
		if line, dup := seen[k.Value]; dup {
			return fmt.Errorf("%s: given twice (lines %d and %d)", key, line, k.Line)
		}
		seen[k.Value] = k.Line
		if _, ok := fields[k.Value]; !ok {
			return fmt.Errorf("%s: unknown key (line %d)", key, k.Line)
		}
		own[k.Value] = true
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].ShortTag() != "!!merge" {
			continue
		}
		merged := resolve(n.Content[i+1])
		sources := []*yaml.Node{merged}
		if merged.Kind == yaml.SequenceNode {
			sources = merged.Content
		}
		for _, src := range sources {
			if src = resolve(src); src.Kind != yaml.MappingNode {
				return fmt.Errorf("%s: a merge key (<<) takes a mapping or a list of mappings (line %d)", join(path, "<<"), src.Line)
			}
			if err := decodeStruct(src, v, path, own); err != nil {
				return err
			}
		}
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.ShortTag() == "!!merge" || skip[k.Value] {
			continue
		}
		key := join(path, k.Value)
		if err := decode(val, v.FieldByIndex(fields[k.Value]), key); err != nil {
			return err
		}
	}
	return nil
}

func resolve(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

// yamlFields maps the YAML keys of struct type t to their field indexes,
// following yaml.v3's rules: the tag's name, else the lower-cased field
// name; "-" skipped; ",inline" structs flattened.
func yamlFields(t reflect.Type) map[string][]int {
	fields := map[string][]int{}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("yaml")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if strings.Contains(","+opts+",", ",inline,") && f.Type.Kind() == reflect.Struct {
			for k, idx := range yamlFields(f.Type) {
				fields[k] = append([]int{i}, idx...)
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		fields[name] = []int{i}
	}
	return fields
}

var durationType = reflect.TypeFor[time.Duration]()

// checkLeaf refuses what yaml.v3 would accept with a loss: a fractional
// number for an integer field (2.5 decodes as 2).
func checkLeaf(n *yaml.Node, v reflect.Value) error {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!float" || v.Type() == durationType {
		return nil
	}
	switch v.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if f, err := strconv.ParseFloat(n.Value, 64); err == nil && f != math.Trunc(f) {
			return fmt.Errorf("%q is not an integer (line %d)", n.Value, n.Line)
		}
	}
	return nil
}

// leafError says why n cannot be read into a field of type t; yamlMsg is
// the decoder's own message, kept when there is nothing better to say.
func leafError(n *yaml.Node, t reflect.Type, yamlMsg string) error {
	if n.Kind != yaml.ScalarNode {
		what := map[yaml.Kind]string{yaml.MappingNode: "a mapping", yaml.SequenceNode: "a list"}[n.Kind]
		if what != "" {
			switch t.Kind() {
			case reflect.Struct:
				return fmt.Errorf("expected a mapping, got %s (line %d)", what, n.Line)
			case reflect.Slice:
				return fmt.Errorf("expected a list, got %s (line %d)", what, n.Line)
			default:
				return fmt.Errorf("expected a single value, got %s (line %d)", what, n.Line)
			}
		}
		return errors.New(yamlMsg)
	}
	var want string
	switch {
	case t == durationType:
		want = "a duration such as 500ms, 30s or 5m"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Int64, t.Kind() >= reflect.Uint && t.Kind() <= reflect.Uint64:
		want = "an integer"
		if n.ShortTag() == "!!int" || n.ShortTag() == "!!float" {
			want = "an integer in range"
		}
	case t.Kind() == reflect.Float32 || t.Kind() == reflect.Float64:
		want = "a number"
	case t.Kind() == reflect.Bool:
		want = "true or false"
	case t.Kind() == reflect.Struct:
		want = "a mapping"
	case t.Kind() == reflect.Slice:
		want = "a list"
	default:
		return errors.New(yamlMsg)
	}
	return fmt.Errorf("%q is not %s (line %d)", n.Value, want, n.Line)
}

func keyError(path string, err error) error {
	if path == "" {
		return err
	}
	return fmt.Errorf("%s: %w", path, err)
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}
