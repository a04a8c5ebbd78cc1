package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/tresorkms/tresor/internal/store"
)

// fieldSchemaTests are the conformance cases of store.FieldSchemas.
var fieldSchemaTests = []struct {
	name string
	fn   func(t *testing.T, s store.Store)
}{
	{"FieldSchemaVersions", testFieldSchemaVersions},
	{"FieldSchemaInvalid", testFieldSchemaInvalid},
	{"FieldSchemaList", testFieldSchemaList},
	{"FieldSchemaConcurrentPuts", testFieldSchemaConcurrentPuts},
}

func putSchema(t *testing.T, s store.Store, name string, version int64, def string) store.FieldSchema {
	t.Helper()
	got, err := s.PutFieldSchema(context.Background(), store.FieldSchema{Name: name, Version: version, Definition: []byte(def)})
	if err != nil {
		t.Fatalf("PutFieldSchema(%q, v%d) err = %v, want nil", name, version, err)
	}
	return got
}

func testFieldSchemaVersions(t *testing.T, s store.Store) {
	ctx := context.Background()
	v1 := putSchema(t, s, "customer", 1, `{"v":1}`)
	if v1.Version != 1 || v1.CreateTime.IsZero() {
		t.Fatalf("PutFieldSchema(customer, 1) = v%d at %v, want v1 with a create time", v1.Version, v1.CreateTime)
	}
	v2 := putSchema(t, s, "customer", 0, `{"v":2}`)
	if v2.Version != 2 {
		t.Fatalf("PutFieldSchema(customer, 0) = v%d, want v2 (the next)", v2.Version)
	}
	for _, tc := range []struct {
		name    string
		version int64
		want    error
		def     string
	}{
		{"latest", 0, nil, `{"v":2}`},
		{"first", 1, nil, `{"v":1}`},
		{"missing version", 3, store.ErrNotFound, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.GetFieldSchema(ctx, "customer", tc.version)
			if !errors.Is(err, tc.want) {
				t.Fatalf("GetFieldSchema(customer, %d) err = %v, want %v", tc.version, err, tc.want)
			}
			if err == nil && string(got.Definition) != tc.def {
				t.Errorf("GetFieldSchema(customer, %d) = %s, want %s", tc.version, got.Definition, tc.def)
			}
		})
	}
	if _, err := s.GetFieldSchema(ctx, "nobody", 0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetFieldSchema(nobody) err = %v, want ErrNotFound", err)
	}
	if _, err := s.PutFieldSchema(ctx, store.FieldSchema{Name: "customer", Version: 2, Definition: []byte(`{}`)}); !errors.Is(err, store.ErrAlreadyExists) {
		t.Errorf("PutFieldSchema(customer, v2 again) err = %v, want ErrAlreadyExists", err)
	}
	if _, err := s.PutFieldSchema(ctx, store.FieldSchema{Name: "customer", Version: 5, Definition: []byte(`{}`)}); !errors.Is(err, store.ErrConflict) {
		t.Errorf("PutFieldSchema(customer, v5 skipping versions) err = %v, want ErrConflict", err)
	}
	all, err := s.ListFieldSchemaVersions(ctx, "customer")
	if err != nil || len(all) != 2 || all[0].Version != 2 || all[1].Version != 1 {
		t.Fatalf("ListFieldSchemaVersions(customer) = %d versions (err %v), want v2, v1", len(all), err)
	}
	if !bytes.Equal(all[1].Definition, []byte(`{"v":1}`)) {
		t.Errorf("ListFieldSchemaVersions(customer)[1] = %s, want the v1 definition", all[1].Definition)
	}
	if _, err := s.ListFieldSchemaVersions(ctx, "nobody"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("ListFieldSchemaVersions(nobody) err = %v, want ErrNotFound", err)
	}
}

func testFieldSchemaInvalid(t *testing.T, s store.Store) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		fs   store.FieldSchema
	}{
		{"no name", store.FieldSchema{Definition: []byte("{}")}},
		{"long name", store.FieldSchema{Name: string(bytes.Repeat([]byte("a"), 64)), Definition: []byte("{}")}},
		{"negative version", store.FieldSchema{Name: "a", Version: -1, Definition: []byte("{}")}},
		{"no definition", store.FieldSchema{Name: "a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := s.PutFieldSchema(ctx, tc.fs); !errors.Is(err, store.ErrInvalidKey) {
				t.Errorf("PutFieldSchema(%s) err = %v, want ErrInvalidKey", tc.name, err)
			}
		})
	}
	if _, _, err := s.ListFieldSchemas(ctx, 10, "not a token"); !errors.Is(err, store.ErrInvalidPageToken) {
		t.Errorf("ListFieldSchemas(bad token) err = %v, want ErrInvalidPageToken", err)
	}
}

func testFieldSchemaList(t *testing.T, s store.Store) {
	ctx := context.Background()
	for i := range 5 {
		name := fmt.Sprintf("schema-%d", i)
		putSchema(t, s, name, 0, `{"v":1}`)
		if i%2 == 0 {
			putSchema(t, s, name, 0, `{"v":2}`)
		}
	}
	var got []store.FieldSchema
	token := ""
	for pages := 0; ; pages++ {
		page, next, err := s.ListFieldSchemas(ctx, 2, token)
		if err != nil {
			t.Fatalf("ListFieldSchemas(2, %q) err = %v, want nil", token, err)
		}
		got = append(got, page...)
		if next == "" {
			break
		}
		if pages > 5 {
			t.Fatal("ListFieldSchemas never ends")
		}
		token = next
	}
	if len(got) != 5 {
		t.Fatalf("ListFieldSchemas listed %d schemas, want 5", len(got))
	}
	for i, fs := range got {
		want := int64(1)
		if i%2 == 0 {
			want = 2
		}
		if fs.Name != fmt.Sprintf("schema-%d", i) || fs.Version != want {
			t.Errorf("ListFieldSchemas()[%d] = %s v%d, want schema-%d v%d (the latest)", i, fs.Name, fs.Version, i, want)
		}
	}
}

func testFieldSchemaConcurrentPuts(t *testing.T, s store.Store) {
	const n = 8
	var wg sync.WaitGroup
	versions := make(chan int64, n)
	for range n {
		wg.Go(func() {
			// Version 0 asks for the next version: each put gets one, no
			// caller loses a race for it.
			fs, err := s.PutFieldSchema(context.Background(), store.FieldSchema{Name: "busy", Definition: []byte("{}")})
			if err != nil {
				t.Errorf("PutFieldSchema(busy, next version) err = %v, want nil", err)
				return
			}
			versions <- fs.Version
		})
	}
	wg.Wait()
	close(versions)
	seen := map[int64]bool{}
	for v := range versions {
		if seen[v] {
			t.Errorf("version %d was stored twice", v)
		}
		seen[v] = true
	}
	if len(seen) != n {
		t.Errorf("%d versions stored, want %d", len(seen), n)
	}
}
