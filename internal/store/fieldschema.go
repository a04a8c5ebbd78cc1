package store

import (
	"context"
	"fmt"
	"time"
)

// FieldSchema is one stored version of a classification schema
// (FieldService). The store keeps its definition as given and never reads
// it: package fields parses and validates it before it is stored.
type FieldSchema struct {
	Name    string
	Version int64
	// Definition is the schema's canonical encoding.
	Definition []byte
	// CreateTime is set by the store.
	CreateTime time.Time
}

// FieldSchemas stores classification schemas, every version of each.
type FieldSchemas interface {
	// PutFieldSchema stores s as a new version and returns it with its
	// version and CreateTime. Version 0 asks for the next version; any
	// other version must be exactly the next (1 for a new schema): a
	// version already stored gives ErrAlreadyExists, one further ahead
	// ErrConflict.
	PutFieldSchema(ctx context.Context, s FieldSchema) (FieldSchema, error)
	// GetFieldSchema returns the named schema's version, or its latest for
	// version 0, or ErrNotFound.
	GetFieldSchema(ctx context.Context, name string, version int64) (FieldSchema, error)
	// ListFieldSchemas returns up to pageSize schemas' latest versions,
	// ordered by name, starting after the name in pageToken, and the token
	// of the next page (empty on the last).
	ListFieldSchemas(ctx context.Context, pageSize int, pageToken string) ([]FieldSchema, string, error)
	// ListFieldSchemaVersions returns every version of the named schema,
	// newest first, or ErrNotFound.
	ListFieldSchemaVersions(ctx context.Context, name string) ([]FieldSchema, error)
}

// maxFieldSchemaVersions bounds ListFieldSchemaVersions.
const maxFieldSchemaVersions = 1000

func checkFieldSchema(s FieldSchema) error {
	if len(s.Name) == 0 || len(s.Name) > 63 {
		return fmt.Errorf("%w: schema name must be 1 to 63 bytes", ErrInvalidKey)
	}
	if s.Version < 0 {
		return fmt.Errorf("%w: schema version %d is negative", ErrInvalidKey, s.Version)
	}
	if len(s.Definition) == 0 {
		return fmt.Errorf("%w: schema %q has no definition", ErrInvalidKey, s.Name)
	}
	return nil
}

// nextFieldSchemaVersion decides the version PutFieldSchema stores, given
// the latest stored (0: none).
func nextFieldSchemaVersion(s FieldSchema, latest int64) (int64, error) {
	switch {
	case s.Version == 0 || s.Version == latest+1:
		return latest + 1, nil
	case s.Version <= latest:
		return 0, fmt.Errorf("%w: schema %q version %d", ErrAlreadyExists, s.Name, s.Version)
	default:
		return 0, fmt.Errorf("%w: schema %q version %d is not the next version (%d)", ErrConflict, s.Name, s.Version, latest+1)
	}
}

// pageFieldSchemas cuts schemas, read with a limit of n+1, to a page of n
// and returns the token of the next page.
func pageFieldSchemas(schemas []FieldSchema, n int) ([]FieldSchema, string) {
	return page(schemas, n, func(s FieldSchema) string { return s.Name })
}
