-- Classification schemas of FieldService (Store.PutFieldSchema): every
-- version of every schema, never changed once written. definition is the
-- schema's canonical JSON; create_time is INTEGER microseconds since the
-- Unix epoch, UTC.

CREATE TABLE field_schemas (
	name        TEXT    NOT NULL CHECK (length(CAST(name AS BLOB)) BETWEEN 1 AND 63),
	version     INTEGER NOT NULL CHECK (version >= 1),
	definition  BLOB    NOT NULL,
	create_time INTEGER NOT NULL,
	PRIMARY KEY (name, version)
) STRICT, WITHOUT ROWID;
