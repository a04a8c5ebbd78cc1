package store

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// PutFieldSchema implements [FieldSchemas.PutFieldSchema] in one
// transaction that holds a transaction-scoped advisory lock on the
// schema's name, so that concurrent puts of "the next version" take one
// version each; the primary key still refuses a version stored twice.
func (s *PostgresStore) PutFieldSchema(ctx context.Context, fs FieldSchema) (FieldSchema, error) {
	if err := ctx.Err(); err != nil {
		return FieldSchema{}, fmt.Errorf("put field schema %q: %w", fs.Name, err)
	}
	if err := checkFieldSchema(fs); err != nil {
		return FieldSchema{}, fmt.Errorf("put field schema: %w", err)
	}
	out := fs
	out.CreateTime = storeTime(s.now())
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('tresor.field_schemas'), hashtext($1))`, fs.Name); err != nil {
			return err
		}
		var latest int64
		if err := tx.QueryRow(ctx, `SELECT COALESCE(MAX(version), 0) FROM field_schemas WHERE name = $1`, fs.Name).Scan(&latest); err != nil {
			return err
		}
		v, err := nextFieldSchemaVersion(fs, latest)
		if err != nil {
			return err
		}
		out.Version = v
		_, err = tx.Exec(ctx, `INSERT INTO field_schemas (name, version, definition, create_time) VALUES ($1, $2, $3, $4)`,
			fs.Name, v, fs.Definition, out.CreateTime)
		return err
	})
	if err != nil {
		return FieldSchema{}, fmt.Errorf("put field schema %q: %w", fs.Name, s.fail(err))
	}
	return out, nil
}

// GetFieldSchema implements [FieldSchemas.GetFieldSchema].
func (s *PostgresStore) GetFieldSchema(ctx context.Context, name string, version int64) (FieldSchema, error) {
	q := `SELECT name, version, definition, create_time FROM field_schemas WHERE name = $1 AND version = $2`
	args := []any{name, version}
	if version == 0 {
		q = `SELECT name, version, definition, create_time FROM field_schemas WHERE name = $1 ORDER BY version DESC LIMIT 1`
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
func (s *PostgresStore) ListFieldSchemas(ctx context.Context, size int, token string) ([]FieldSchema, string, error) {
	after, err := decodePageToken(token)
	if err != nil {
		return nil, "", fmt.Errorf("list field schemas: %w", err)
	}
	n := pageSize(size)
	out, err := s.fieldSchemas(ctx, `SELECT DISTINCT ON (name) name, version, definition, create_time FROM field_schemas
		WHERE name > $1 ORDER BY name, version DESC LIMIT $2`, after, n+1)
	if err != nil {
		return nil, "", fmt.Errorf("list field schemas: %w", err)
	}
	out, next := pageFieldSchemas(out, n)
	return out, next, nil
}

// ListFieldSchemaVersions implements [FieldSchemas.ListFieldSchemaVersions].
func (s *PostgresStore) ListFieldSchemaVersions(ctx context.Context, name string) ([]FieldSchema, error) {
	out, err := s.fieldSchemas(ctx, `SELECT name, version, definition, create_time FROM field_schemas
		WHERE name = $1 ORDER BY version DESC LIMIT $2`, name, maxFieldSchemaVersions)
	if err != nil {
		return nil, fmt.Errorf("list versions of field schema %q: %w", name, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("list versions of field schema %q: %w", name, ErrNotFound)
	}
	return out, nil
}

func (s *PostgresStore) fieldSchemas(ctx context.Context, q string, args ...any) ([]FieldSchema, error) {
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, s.fail(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (FieldSchema, error) {
		var fs FieldSchema
		err := r.Scan(&fs.Name, &fs.Version, &fs.Definition, &fs.CreateTime)
		fs.CreateTime = fs.CreateTime.UTC()
		return fs, err
	})
	if err != nil {
		return nil, s.fail(err)
	}
	return out, nil
}
