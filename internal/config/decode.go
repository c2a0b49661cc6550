package config

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Problem is one thing wrong with a configuration file.
type Problem struct {
	Line    int // 1-based; 0 when the problem has no place (a missing key)
	Message string
}

// decoder fills a Config from a YAML node tree, key by key, so that every
// problem is found at once and named by its key path and line, in the
// user's words rather than Go's.
type decoder struct {
	problems []Problem
	lines    map[string]int  // key path ("gitlab.url", "listen[0]") → line
	zero     map[string]bool // keys written with an empty or zero value
}

func (d *decoder) add(line int, format string, args ...any) {
	d.problems = append(d.problems, Problem{Line: line, Message: fmt.Sprintf(format, args...)})
}

// line returns the line of key, or of its closest parent that has one.
func (d *decoder) line(key string) int {
	for key != "" {
		if l, ok := d.lines[key]; ok {
			return l
		}
		i := strings.LastIndexAny(key, ".[")
		if i < 0 {
			break
		}
		key = key[:i]
	}
	return 0
}

var unmarshaler = reflect.TypeFor[yaml.Unmarshaler]()

func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if path != "" {
		d.lines[path] = n.Line
		if isZeroNode(n) {
			d.zero[path] = true
		}
	}
	if v.Kind() == reflect.Struct && !reflect.PointerTo(v.Type()).Implements(unmarshaler) {
		d.decodeStruct(n, v, path)
		return
	}
	if v.Kind() == reflect.Slice && n.Kind == yaml.SequenceNode && v.Type().Elem().Kind() != reflect.Uint8 {
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			d.decode(item, s.Index(i), fmt.Sprintf("%s[%d]", path, i))
		}
		v.Set(s)
		return
	}
	if err := n.Decode(v.Addr().Interface()); err != nil {
		d.add(n.Line, "%s: %s", path, valueProblem(err, n, v.Type()))
	}
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return
	}
	if n.Kind != yaml.MappingNode {
		where := path
		if where == "" {
			where = "the configuration"
		}
		d.add(n.Line, "%s: a mapping of keys is expected, not %s", where, describe(n))
		return
	}
	fields := map[string]int{}
	var names []string
	for i := 0; i < v.NumField(); i++ {
		tag, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("yaml"), ",")
		if tag == "" || tag == "-" || !v.Type().Field(i).IsExported() {
			continue
		}
		fields[tag] = i
		names = append(names, tag)
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		key := join(path, k.Value)
		if first, dup := seen[k.Value]; dup {
			d.add(k.Line, "%s: written twice (first on line %d)", key, first)
			continue
		}
		seen[k.Value] = k.Line
		idx, ok := fields[k.Value]
		if !ok {
			msg := fmt.Sprintf("unknown key %q", k.Value)
			if path != "" {
				msg = fmt.Sprintf("unknown key %q in %s", k.Value, path)
			}
			if s := closest(k.Value, names); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			} else {
				sort.Strings(names)
				msg += " (known: " + strings.Join(names, ", ") + ")"
			}
			d.add(k.Line, "%s", msg)
			continue
		}
		d.decode(val, v.Field(idx), key)
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func isZeroNode(n *yaml.Node) bool {
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Tag == "!!null" || n.Value == "" {
			return true
		}
		if n.Tag == "!!int" || n.Tag == "!!float" {
			f, err := strconv.ParseFloat(n.Value, 64)
			return err == nil && f == 0
		}
		return n.Value == "0s" || n.Value == "0"
	case yaml.SequenceNode, yaml.MappingNode:
		return len(n.Content) == 0
	}
	return false
}

// describe names what a node holds, as a user wrote it.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	}
	if n.Tag == "!!null" {
		return "nothing"
	}
	return strconv.Quote(n.Value)
}

var goTypeRE = regexp.MustCompile(`cannot unmarshal|into [a-z]|config\.`)

// valueProblem turns a decode error into a sentence without Go type names.
func valueProblem(err error, n *yaml.Node, t reflect.Type) string {
	var te *yaml.TypeError
	if !errors.As(err, &te) && !goTypeRE.MatchString(err.Error()) {
		return err.Error() // our own UnmarshalYAML: already in the user's words
	}
	want := ""
	switch t.Kind() {
	case reflect.String:
		want = "a text value"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		want = "a whole number"
	case reflect.Float32, reflect.Float64:
		want = "a number"
	case reflect.Bool:
		want = "true or false"
	case reflect.Slice:
		want = "a list"
	case reflect.Map, reflect.Struct:
		want = "a mapping"
	default:
		want = "another kind of value"
	}
	return fmt.Sprintf("%s is expected, not %s", want, describe(n))
}

// closest returns the known key nearest to s (at most 2 edits, or a prefix
// relation), or "".
func closest(s string, known []string) string {
	best, bestD := "", 3
	for _, k := range known {
		dist := editDistance(s, k)
		if strings.HasPrefix(k, s) || strings.HasPrefix(s, k) {
			dist = min(dist, 2)
		}
		if dist < bestD || (dist == bestD && k < best) {
			best, bestD = k, dist
		}
	}
	return best
}

// editDistance is the Damerau–Levenshtein distance (adjacent swaps count one).
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	d := make([][]int, len(ra)+1)
	for i := range d {
		d[i] = make([]int, len(rb)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(ra); i++ {
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(ra)][len(rb)]
}
