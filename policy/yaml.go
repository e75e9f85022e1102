package policy

import (
	"encoding"
	"errors"
	"fmt"
	"math"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	yaml "github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
)

// maxPolicyBytes bounds the size of a policy file; larger files are refused
// before parsing.
const maxPolicyBytes = 1 << 20

// LoadFile reads, decodes, validates and compiles the policy file at path.
// Every error carries path:line:column and what is wrong; several problems
// are reported together (joined with errors.Join).
func LoadFile(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	return Parse(data, path)
}

// Parse decodes, validates and compiles a policy document. filename is used
// only in error messages. Every problem of the document is reported, in
// the order of its position; several are joined with errors.Join, so that
// errors.As finds the first *Error and the Unwrap() []error method of the
// result lists them all.
func Parse(data []byte, filename string) (*Policy, error) {
	cfg, d, err := decodeYAML(data, filename)
	if err != nil {
		return nil, err
	}
	p, err := New(*cfg)
	if err == nil && len(d.errs) == 0 {
		return p, nil
	}
	errs := d.errs
	if err != nil {
		for _, e := range locate(err, filename, d.pos) {
			if !d.explains(e) {
				errs = append(errs, e)
			}
		}
	}
	sort.SliceStable(errs, func(i, j int) bool { return before(errs[i], errs[j]) })
	if len(errs) == 1 {
		return nil, errs[0]
	}
	return nil, errors.Join(errs...)
}

// before orders located errors by line, then column.
func before(a, b error) bool {
	var pa, pb *Error
	if !errors.As(a, &pa) || !errors.As(b, &pb) {
		return false
	}
	if pa.Line != pb.Line {
		return pa.Line < pb.Line
	}
	return pa.Column < pb.Column
}

// explains reports whether a validation error follows from a problem the
// decoder already reported: it is about the same field, one inside it, or
// one that holds it (a rule whose only limit was misspelt "limits
// nothing"). Reporting it too would only repeat the decoder's error.
func (d *decoder) explains(err error) bool {
	var pe *Error
	if !errors.As(err, &pe) || pe.Path == "" {
		return false
	}
	for _, de := range d.errs {
		var q *Error
		if errors.As(de, &q) && q.Path != "" && (within(pe.Path, q.Path) || within(q.Path, pe.Path)) {
			return true
		}
	}
	return false
}

// within reports whether path is outer or a field inside it.
func within(path, outer string) bool {
	if !strings.HasPrefix(path, outer) {
		return false
	}
	rest := path[len(outer):]
	return rest == "" || rest[0] == '.' || rest[0] == '['
}

type position struct{ line, col int }

// decodeYAML parses data and decodes it into a Config. The error is a
// problem that stops decoding (syntax); the problems of single fields are
// left in the decoder's errs, so that validation still reports the others.
func decodeYAML(data []byte, filename string) (*Config, *decoder, error) {
	if len(data) > maxPolicyBytes {
		return nil, nil, &Error{File: filename, Line: 1, Column: 1, Msg: fmt.Sprintf("file is larger than %d bytes", maxPolicyBytes)}
	}
	f, err := parser.ParseBytes(data, 0)
	if err != nil {
		return nil, nil, syntaxError(data, filename, err)
	}
	var body ast.Node
	for _, d := range f.Docs {
		if d.Body == nil {
			continue
		}
		if body != nil {
			t := d.Body.GetToken()
			return nil, nil, &Error{File: filename, Line: t.Position.Line, Column: t.Position.Column, Msg: "a policy file holds exactly one YAML document"}
		}
		body = d.Body
	}
	if body == nil {
		return nil, nil, &Error{File: filename, Line: 1, Column: 1, Msg: "empty policy"}
	}
	d := &decoder{file: filename, pos: map[string]position{}, anchors: map[string]ast.Node{}}
	cfg := new(Config)
	d.decode(body, reflect.ValueOf(cfg).Elem(), "", 0)
	return cfg, d, nil
}

// syntaxError locates a YAML syntax error and says how to fix the common
// ones: a tab in the indentation, and a line indented deeper than the keys
// above it (the parser reads it as the continuation of the previous value,
// and points at that value, on the line before).
func syntaxError(data []byte, filename string, err error) error {
	for i, line := range strings.Split(string(data), "\n") {
		indent := line[:len(line)-len(strings.TrimLeft(line, " \t"))]
		if tab := strings.IndexByte(indent, '\t'); tab >= 0 {
			return &Error{File: filename, Line: i + 1, Column: tab + 1, Msg: "YAML syntax: a tab in the indentation: indent with spaces"}
		}
	}
	var se *yaml.SyntaxError
	if !errors.As(err, &se) || se.Token == nil {
		return &Error{File: filename, Line: 1, Column: 1, Msg: "YAML syntax: " + err.Error()}
	}
	tk := se.Token
	e := &Error{File: filename, Line: tk.Position.Line, Column: tk.Position.Column, Msg: "YAML syntax: " + se.Message}
	switch {
	case strings.Contains(strings.TrimSpace(tk.Origin), "\n") && tk.Next != nil && tk.Next.Value == ":":
		// "key: a\n      other: b": "a other" became one value; the
		// problem is the deeper line that holds the next ":".
		e.Line = tk.Next.Position.Line
		e.Column = tk.Next.Position.IndentNum + 1
		e.Msg = "YAML syntax: this line is indented deeper than the key above it; keys of one mapping start in the same column"
	case se.Message == "value is not allowed in this context":
		e.Msg += " (is the line indented less than the keys above it?)"
	}
	return e
}

// locate fills in file, line and column of the validation errors in err
// from the positions recorded while decoding: the position of the error's
// path, or of its nearest recorded parent.
func locate(err error, filename string, pos map[string]position) []error {
	var errs []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	} else {
		errs = []error{err}
	}
	out := make([]error, 0, len(errs))
	for _, e := range errs {
		var pe *Error
		if !errors.As(e, &pe) {
			out = append(out, fmt.Errorf("%s: %w", filename, e))
			continue
		}
		c := *pe
		c.File = filename
		for p := c.Path; ; p = parentPath(p) {
			if at, ok := pos[p]; ok {
				c.Line, c.Column = at.line, at.col
				break
			}
			if p == "" {
				c.Line, c.Column = 1, 1
				break
			}
		}
		out = append(out, &c)
	}
	return out
}

// parentPath returns "rules[1]" for "rules[1].rate", "rules" for
// "rules[1]" and "" for "rules".
func parentPath(p string) string {
	if i := strings.LastIndexAny(p, ".["); i >= 0 {
		return p[:i]
	}
	return ""
}

// decoder walks the YAML syntax tree into Go values by their yaml tags,
// rejecting unknown fields and recording the position of every path.
type decoder struct {
	file    string
	pos     map[string]position
	anchors map[string]ast.Node
	errs    []error
}

const maxDepth = 32

func (d *decoder) fail(n ast.Node, path, format string, args ...any) {
	t := n.GetToken()
	line, col := 1, 1
	if t != nil {
		line, col = t.Position.Line, t.Position.Column
	}
	d.errs = append(d.errs, &Error{File: d.file, Line: line, Column: col, Path: path, Msg: fmt.Sprintf(format, args...)})
}

// resolve follows anchors, aliases, tags and comments to the node that
// holds the value.
func (d *decoder) resolve(n ast.Node, path string) ast.Node {
	for i := 0; i < maxDepth && n != nil; i++ {
		switch v := n.(type) {
		case *ast.AnchorNode:
			d.anchors[v.Name.GetToken().Value] = v.Value
			n = v.Value
		case *ast.AliasNode:
			name := v.Value.GetToken().Value
			target, ok := d.anchors[name]
			if !ok {
				d.fail(n, path, "unknown alias *%s", name)
				return nil
			}
			n = target
		case *ast.TagNode:
			n = v.Value
		case *ast.CommentGroupNode:
			return nil
		default:
			return n
		}
	}
	return n
}

var durationType = reflect.TypeOf(time.Duration(0))

func (d *decoder) decode(n ast.Node, v reflect.Value, path string, depth int) {
	if depth > maxDepth {
		d.fail(n, path, "nesting deeper than %d levels", maxDepth)
		return
	}
	orig := n
	n = d.resolve(n, path)
	if n == nil {
		return
	}
	d.pos[path] = nodePos(orig, n)
	if _, isNull := n.(*ast.NullNode); isNull {
		return // null leaves the zero value: the documented default
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.decode(n, v.Elem(), path, depth+1)
	case reflect.Struct:
		d.decodeStruct(n, v, path, depth)
	case reflect.Map:
		d.decodeMap(n, v, path, depth)
	case reflect.Slice:
		s, ok := n.(*ast.SequenceNode)
		if !ok {
			d.fail(n, path, "expected a list, got %s", describe(n))
			return
		}
		out := reflect.MakeSlice(v.Type(), len(s.Values), len(s.Values))
		for i, e := range s.Values {
			d.decode(e, out.Index(i), fmt.Sprintf("%s[%d]", path, i), depth+1)
		}
		v.Set(out)
	default:
		d.scalar(n, v, path)
	}
}

// decodeStruct decodes a mapping into the fields of v by their yaml tags.
func (d *decoder) decodeStruct(n ast.Node, v reflect.Value, path string, depth int) {
	values, ok := mappingValues(n)
	if !ok {
		d.fail(n, path, "expected a mapping of %s fields, got %s", fieldsOf(v.Type()), describe(n))
		return
	}
	seen := map[string]bool{}
	for _, mv := range values {
		key := d.resolve(mv.Key, path)
		if key == nil {
			continue
		}
		name := key.GetToken().Value
		sub := join(path, name)
		if seen[name] {
			d.fail(mv.Key, sub, "duplicate field %q", name)
			continue
		}
		seen[name] = true
		f, ok := fieldByTag(v, name)
		if !ok {
			d.fail(mv.Key, sub, "unknown field %q (known: %s)", name, fieldsOf(v.Type()))
			continue
		}
		d.decode(mv.Value, f, sub, depth+1)
		d.atKey(mv, sub)
	}
}

// atKey records a mapping-valued field at its key ("redis:"), not at its
// first entry, so that an error about the section as a whole ("has no
// effect", "sets no limit") points at the line that names it.
func (d *decoder) atKey(mv *ast.MappingValueNode, path string) {
	if _, ok := mappingValues(d.resolve(mv.Value, path)); !ok {
		return
	}
	if t := mv.Key.GetToken(); t != nil {
		d.pos[path] = position{t.Position.Line, t.Position.Column}
	}
}

// adjacentPair returns "k:v" for a one-entry mapping written k:v, with no
// space after the colon: YAML reads that as one plain scalar, but the
// parser makes a mapping of it inside a flow collection nested in a flow
// mapping ({from: [header:Authorization]}).
func adjacentPair(n ast.Node) (string, bool) {
	if m, ok := n.(*ast.MappingNode); ok && len(m.Values) == 1 {
		n = m.Values[0]
	}
	mv, ok := n.(*ast.MappingValueNode)
	if !ok {
		return "", false
	}
	k, kok := mv.Key.(*ast.StringNode)
	v, vok := mv.Value.(*ast.StringNode)
	if !kok || !vok {
		return "", false
	}
	kp, vp := k.GetToken().Position, v.GetToken().Position
	if kp.Line != vp.Line || vp.Column != kp.Column+len(k.Value)+1 {
		return "", false
	}
	return k.Value + ":" + v.Value, true
}

// decodeMap decodes a mapping into the map v.
func (d *decoder) decodeMap(n ast.Node, v reflect.Value, path string, depth int) {
	values, ok := mappingValues(n)
	if !ok {
		d.fail(n, path, "expected a mapping, got %s", describe(n))
		return
	}
	if v.IsNil() {
		v.Set(reflect.MakeMap(v.Type()))
	}
	for _, mv := range values {
		key := d.resolve(mv.Key, path)
		if key == nil {
			continue
		}
		name := key.GetToken().Value
		sub := join(path, name)
		kv := reflect.ValueOf(name).Convert(v.Type().Key())
		if v.MapIndex(kv).IsValid() {
			d.fail(mv.Key, sub, "duplicate key %q", name)
			continue
		}
		ev := reflect.New(v.Type().Elem()).Elem()
		d.decode(mv.Value, ev, sub, depth+1)
		d.atKey(mv, sub)
		v.SetMapIndex(kv, ev)
	}
}

// scalarText returns the text of the single value n, for v; false (and
// the error recorded) when n is a collection.
func (d *decoder) scalarText(n ast.Node, v reflect.Value, path string) (string, bool) {
	switch n.(type) {
	case *ast.MappingNode, *ast.SequenceNode, *ast.MappingValueNode:
		if text, joined := adjacentPair(n); joined && v.Kind() == reflect.String {
			return text, true
		}
		d.fail(n, path, "expected a single value, got %s", describe(n))
		return "", false
	}
	return n.GetToken().Value, true
}

func (d *decoder) scalar(n ast.Node, v reflect.Value, path string) {
	text, ok := d.scalarText(n, v, path)
	if !ok {
		return
	}
	if u, ok := v.Addr().Interface().(encoding.TextUnmarshaler); ok {
		// Types that parse a word of their own (capacity.Cap: an integer
		// or "auto"); their integers take the integer path below.
		if _, isInt := n.(*ast.IntegerNode); !isInt || v.Kind() != reflect.Int {
			if err := u.UnmarshalText([]byte(text)); err != nil {
				d.fail(n, path, "expected an integer or auto, got %s", describe(n))
			}
			return
		}
	}
	switch {
	case v.Type() == durationType:
		dur, err := time.ParseDuration(text)
		if err != nil {
			d.fail(n, path, "%q is not a duration (examples: 50ms, 30s, 5m)", text)
			return
		}
		v.SetInt(int64(dur))
	case v.Kind() == reflect.String:
		v.SetString(text)
	case v.Kind() == reflect.Int:
		if _, ok := n.(*ast.IntegerNode); !ok {
			d.fail(n, path, "expected an integer, got %s", describe(n))
			return
		}
		i, err := strconv.ParseInt(strings.ReplaceAll(text, "_", ""), 0, 64)
		if err != nil || int64(int(i)) != i {
			d.fail(n, path, "%q is not an integer in range", text)
			return
		}
		v.SetInt(i)
	case v.Kind() == reflect.Float64:
		_, isInt := n.(*ast.IntegerNode)
		_, isFloat := n.(*ast.FloatNode)
		f, err := strconv.ParseFloat(strings.ReplaceAll(text, "_", ""), 64)
		if (!isInt && !isFloat) || err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
			d.fail(n, path, "expected a number, got %s", describe(n))
			return
		}
		v.SetFloat(f)
	case v.Kind() == reflect.Bool:
		b, ok := n.(*ast.BoolNode)
		if !ok {
			d.fail(n, path, "expected true or false, got %s", describe(n))
			return
		}
		v.SetBool(b.Value)
	default:
		d.fail(n, path, "unsupported field type %s", v.Type())
	}
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func fieldByTag(v reflect.Value, name string) (reflect.Value, bool) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		if tagName(t.Field(i)) == name {
			return v.Field(i), true
		}
	}
	return reflect.Value{}, false
}

func tagName(f reflect.StructField) string {
	tag := f.Tag.Get("yaml")
	if i := strings.IndexByte(tag, ','); i >= 0 {
		tag = tag[:i]
	}
	return tag
}

func fieldsOf(t reflect.Type) string {
	var names []string
	for i := 0; i < t.NumField(); i++ {
		if n := tagName(t.Field(i)); n != "" && n != "-" {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

func describe(n ast.Node) string {
	switch n.(type) {
	case *ast.MappingNode, *ast.MappingValueNode:
		return "a mapping"
	case *ast.SequenceNode:
		return "a list"
	case *ast.StringNode:
		return fmt.Sprintf("string %q", n.GetToken().Value)
	case *ast.IntegerNode:
		return "integer " + n.GetToken().Value
	case *ast.FloatNode:
		return "number " + n.GetToken().Value
	case *ast.BoolNode:
		return "boolean " + n.GetToken().Value
	default:
		return fmt.Sprintf("%q", n.GetToken().Value)
	}
}

// mappingValues returns the entries of a mapping; the parser represents a
// one-entry block mapping as a bare MappingValueNode.
func mappingValues(n ast.Node) ([]*ast.MappingValueNode, bool) {
	switch m := n.(type) {
	case *ast.MappingNode:
		return m.Values, true
	case *ast.MappingValueNode:
		return []*ast.MappingValueNode{m}, true
	}
	return nil, false
}

// nodePos is where a value starts: a mapping's first key, else the node's
// own token.
func nodePos(orig, n ast.Node) position {
	if values, ok := mappingValues(n); ok && len(values) > 0 {
		if t := values[0].Key.GetToken(); t != nil {
			return position{t.Position.Line, t.Position.Column}
		}
	}
	if t := orig.GetToken(); t != nil {
		return position{t.Position.Line, t.Position.Column}
	}
	return position{1, 1}
}
