package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// PutFieldSchema implements [FieldSchemas.PutFieldSchema] in one write
// transaction.
func (s *SQLite) PutFieldSchema(ctx context.Context, fs FieldSchema) (FieldSchema, error) {
	if err := ctx.Err(); err != nil {
		return FieldSchema{}, fmt.Errorf("put field schema %q: %w", fs.Name, err)
	}
	if err := checkFieldSchema(fs); err != nil {
		return FieldSchema{}, fmt.Errorf("put field schema: %w", err)
	}
	out := fs
	out.CreateTime = storeTime(s.now())
	err := s.write(ctx, func(tx *sql.Tx) error {
		var latest int64
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM field_schemas WHERE name = ?`, fs.Name).Scan(&latest); err != nil {
			return sqliteErr(err)
		}
		v, err := nextFieldSchemaVersion(fs, latest)
		if err != nil {
			return err
		}
		out.Version = v
		_, err = tx.ExecContext(ctx, `INSERT INTO field_schemas (name, version, definition, create_time) VALUES (?, ?, ?, ?)`,
			fs.Name, v, fs.Definition, out.CreateTime.UnixMicro())
		return sqliteErr(err)
	})
	if err != nil {
		return FieldSchema{}, fmt.Errorf("put field schema %q: %w", fs.Name, err)
	}
	return out, nil
}

// GetFieldSchema implements [FieldSchemas.GetFieldSchema].
func (s *SQLite) GetFieldSchema(ctx context.Context, name string, version int64) (FieldSchema, error) {
	q := `SELECT name, version, definition, create_time FROM field_schemas WHERE name = ? AND version = ?`
	args := []any{name, version}
	if version == 0 {
		q = `SELECT name, version, definition, create_time FROM field_schemas WHERE name = ? ORDER BY version DESC LIMIT 1`
		args = args[:1]
	}
	out, err := s.fieldSchemas(ctx, q, args...)
	if err != nil {
		return FieldSchema{}, fmt.Errorf("get field schema %q version %d: %w", name, version, err)
	}
	if len(out) == 0 {
		return FieldSchema{}, fmt.Errorf("get field schema %q version %d: %w", name, version, ErrNotFound)
	}
	return out[0], nil
}

// ListFieldSchemas implements [FieldSchemas.ListFieldSchemas].
func (s *SQLite) ListFieldSchemas(ctx context.Context, size int, token string) ([]FieldSchema, string, error) {
	after, err := decodePageToken(token)
	if err != nil {
		return nil, "", fmt.Errorf("list field schemas: %w", err)
	}
	n := pageSize(size)
	out, err := s.fieldSchemas(ctx, `SELECT f.name, f.version, f.definition, f.create_time FROM field_schemas f
		WHERE f.name > ? AND f.version = (SELECT MAX(version) FROM field_schemas WHERE name = f.name)
		ORDER BY f.name LIMIT ?`, after, n+1)
	if err != nil {
		return nil, "", fmt.Errorf("list field schemas: %w", err)
	}
	out, next := pageFieldSchemas(out, n)
	return out, next, nil
}

// ListFieldSchemaVersions implements [FieldSchemas.ListFieldSchemaVersions].
func (s *SQLite) ListFieldSchemaVersions(ctx context.Context, name string) ([]FieldSchema, error) {
	out, err := s.fieldSchemas(ctx, `SELECT name, version, definition, create_time FROM field_schemas
		WHERE name = ? ORDER BY version DESC LIMIT ?`, name, maxFieldSchemaVersions)
	if err != nil {
		return nil, fmt.Errorf("list versions of field schema %q: %w", name, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("list versions of field schema %q: %w", name, ErrNotFound)
	}
	return out, nil
}

func (s *SQLite) fieldSchemas(ctx context.Context, q string, args ...any) ([]FieldSchema, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, sqliteErr(err)
	}
	defer rows.Close()
	var out []FieldSchema
	for rows.Next() {
		var (
			fs      FieldSchema
			created int64
		)
		if err := rows.Scan(&fs.Name, &fs.Version, &fs.Definition, &created); err != nil {
			return nil, sqliteErr(err)
		}
		fs.CreateTime = time.UnixMicro(created).UTC()
		out = append(out, fs)
	}
	if err := rows.Err(); err != nil {
		return nil, sqliteErr(err)
	}
	return out, nil
}
