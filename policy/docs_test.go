package policy

import (
	"bufio"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// TestDocsMatchSchema keeps docs/policy.md and the configuration schema
// from drifting apart: every yaml field of Config (and of the types it
// holds) has a row in the table of its section of docs/policy.md, every
// mapping has a section of its own, and every row names a field that
// exists. A field added to the code without its row, or a row left behind
// by a removed field, fails here.
func TestDocsMatchSchema(t *testing.T) {
	code := map[string]bool{}
	sections := map[string]bool{"": true}
	schemaFields(reflect.TypeFor[Config](), "", code, sections)

	documented, docSections := docFields(t, "../docs/policy.md")
	for _, f := range sorted(code) {
		if !documented[f] {
			t.Errorf("docs/policy.md: field %s is in the code but has no table row in its section", f)
		}
	}
	for _, f := range sorted(documented) {
		if !code[f] {
			t.Errorf("docs/policy.md documents %s, which is not a field of the schema", f)
		}
	}
	for _, s := range sorted(sections) {
		if !docSections[s] {
			t.Errorf("docs/policy.md: mapping %s has no section (a heading naming `%s` with a field table)", s, s)
		}
	}
	for _, s := range sorted(docSections) {
		if !sections[s] {
			t.Errorf("docs/policy.md has a section for %s, which is not a mapping of the schema", s)
		}
	}
	if len(code) < 60 {
		t.Errorf("the schema walk found only %d fields: the walk is broken", len(code))
	}
}

// schemaFields records the yaml path of every field of struct type t under
// prefix, and every path that holds a mapping of fields. A list of
// mappings is written "rules[]", a map's values "values.<value>".
func schemaFields(t reflect.Type, prefix string, fields, sections map[string]bool) {
	for i := range t.NumField() {
		name := tagName(t.Field(i))
		if name == "" || name == "-" {
			continue
		}
		path := join(prefix, name)
		fields[path] = true
		ft := t.Field(i).Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		switch {
		case ft.Kind() == reflect.Struct && ft != durationType:
			sections[path] = true
			schemaFields(ft, path, fields, sections)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			sections[path+"[]"] = true
			schemaFields(ft.Elem(), path+"[]", fields, sections)
		case ft.Kind() == reflect.Map && ft.Elem().Kind() == reflect.Struct:
			sections[path+".<value>"] = true
			schemaFields(ft.Elem(), path+".<value>", fields, sections)
		}
	}
}

var (
	headingRE = regexp.MustCompile("^#{2,3} (?:`([^`]+)`|(Top level))")
	cellRE    = regexp.MustCompile("`([a-z0-9_]+(?:(?:\\[\\])?\\.[a-z0-9_]+)*)`")
)

// docFields reads the field tables of docs/policy.md: under a heading that
// names a section in backticks (or "Top level"), each table row's first
// cell lists the fields it documents in backticks.
func docFields(t *testing.T, path string) (fields, sections map[string]bool) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fields, sections = map[string]bool{}, map[string]bool{}
	section, inSection := "", false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "## ") || strings.HasPrefix(line, "### ") {
			m := headingRE.FindStringSubmatch(line)
			section, inSection = "", m != nil
			if m != nil && m[1] != "" {
				section = m[1]
			}
			continue
		}
		if !inSection || !strings.HasPrefix(line, "| `") {
			continue
		}
		sections[section] = true
		first := strings.SplitN(line, "|", 3)[1]
		for _, m := range cellRE.FindAllStringSubmatch(first, -1) {
			documentPath(section, m[1], fields, sections)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return fields, sections
}

func sorted(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// documentPath records the row name name of section: a dotted name
// (offences.refused, limits[].name) documents each field on its way and
// makes each mapping on its way a section.
func documentPath(section, name string, fields, sections map[string]bool) {
	parts := strings.Split(name, ".")
	for i, part := range parts {
		field := strings.TrimSuffix(part, "[]")
		fields[join(section, field)] = true
		if i < len(parts)-1 {
			section = join(section, part)
			sections[section] = true
		}
	}
}
