package governance

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/tresorkms/tresor/internal/store"
)

// SchemaFile is one classification schema as a SchemaSource read it.
type SchemaFile struct {
	// Name is the file, the subject of its findings.
	Name string
	// Err is why the schema does not parse; nil when it does.
	Err error
	// Keys are the named keys the schema uses.
	Keys []SchemaKey
}

// SchemaKey is a named key a classification schema uses.
type SchemaKey struct {
	// Name is the key's name, with or without a "keys/" prefix.
	Name string
	// Type is the key type the schema needs, as the key store names it
	// (store.KeyType.String: AES256_GCM, ...); empty accepts any.
	Type string
}

// SchemaSource reads the classification schemas of a deployment. An error
// means the schemas could not be listed at all.
type SchemaSource func(ctx context.Context) ([]SchemaFile, error)

// SchemaParser parses one classification schema and returns the named
// keys it uses: fields.ParseSchema followed by (*fields.Schema).Keys.
type SchemaParser func(data []byte) (keys []SchemaKey, err error)

// SchemaDir is a SchemaSource that parses every *.yaml, *.yml and *.json
// file of dir (not of its subdirectories), in name order, with parse.
func SchemaDir(dir string, parse SchemaParser) SchemaSource {
	return func(ctx context.Context) ([]SchemaFile, error) {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("governance: classification schemas: %w", err)
		}
		var out []SchemaFile
		for _, de := range entries {
			ext := strings.ToLower(filepath.Ext(de.Name()))
			if !de.Type().IsRegular() || (ext != ".yaml" && ext != ".yml" && ext != ".json") {
				continue
			}
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			path := filepath.Join(dir, de.Name())
			sf := SchemaFile{Name: path}
			data, err := os.ReadFile(path)
			if err == nil {
				sf.Keys, err = parse(data)
			}
			sf.Err = err
			out = append(out, sf)
		}
		return out, nil
	}
}

// CheckSchemas reads the classification schemas from src and checks them
// against the key inventory: a schema that does not parse, and a key a
// schema uses that does not exist, is not enabled or is of another type
// than the schema needs (documents that need it would fail), are errors. When keys is nil (the inventory could not be
// read) the references are not checked, and an informational finding
// says so.
func CheckSchemas(ctx context.Context, src SchemaSource, keys []KeyInfo) []Finding {
	files, err := src(ctx)
	if err != nil {
		return []Finding{{Check: SchemaCheck, Severity: SeverityError, Message: err.Error(), Err: err}}
	}
	if len(files) == 0 {
		return []Finding{{Check: SchemaCheck, Severity: SeverityInfo, Message: "no classification schema found"}}
	}
	var byName map[string]store.Key
	if keys != nil {
		byName = make(map[string]store.Key, len(keys))
		for _, ki := range keys {
			byName[ki.Key.Name] = ki.Key
		}
	}
	var out []Finding
	for _, f := range files {
		add := func(s Severity, format string, args ...any) {
			out = append(out, Finding{Check: SchemaCheck, Severity: s, Subject: f.Name, Message: fmt.Sprintf(format, args...), Err: f.Err})
		}
		if f.Err != nil {
			add(SeverityError, "does not parse: %v", f.Err)
			continue
		}
		uses := make([]SchemaKey, 0, len(f.Keys))
		for _, u := range f.Keys {
			uses = append(uses, SchemaKey{Name: strings.TrimPrefix(u.Name, "keys/"), Type: u.Type})
		}
		slices.SortFunc(uses, func(a, b SchemaKey) int { return strings.Compare(a.Name+"\x00"+a.Type, b.Name+"\x00"+b.Type) })
		uses = slices.Compact(uses)
		if byName == nil {
			add(SeverityInfo, "parses; its %d key reference(s) were not checked: the key inventory was not read", len(uses))
			continue
		}
		bad := 0
		for _, u := range uses {
			k, ok := byName[u.Name]
			switch {
			case !ok:
				add(SeverityError, "uses key %q, which does not exist", u.Name)
			case k.State != store.KeyStateEnabled:
				add(SeverityError, "uses key %q, which is %s: documents that need it fail", u.Name, k.State)
			case u.Type != "" && u.Type != k.Type.String():
				add(SeverityError, "uses key %q as %s, but it is %s", u.Name, u.Type, k.Type)
			default:
				continue
			}
			bad++
		}
		if bad == 0 {
			add(SeverityInfo, "parses; all %d key(s) it uses exist, are enabled and have the right type", len(uses))
		}
	}
	return out
}
