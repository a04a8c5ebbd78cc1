-- Classification schemas of FieldService (Store.PutFieldSchema), as in the
-- SQLite schema: every version of every schema, never changed once written.

CREATE TABLE field_schemas (
	name        text COLLATE "C" NOT NULL CHECK (octet_length(name) BETWEEN 1 AND 63),
	version     bigint      NOT NULL CHECK (version >= 1),
	definition  bytea       NOT NULL,
	create_time timestamptz NOT NULL,
	PRIMARY KEY (name, version)
);
