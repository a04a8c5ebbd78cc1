-- Named keys and their versions.
--
-- Times are INTEGER microseconds since the Unix epoch, UTC. Type and state
-- hold KeyType.String and KeyState.String. labels is a JSON object of strings.
-- wrapped_keyset is opaque to the store: the keyset, wrapped by the root key
-- named root_key_id.

CREATE TABLE keys (
	name                   TEXT    NOT NULL PRIMARY KEY,
	type                   TEXT    NOT NULL,
	state                  TEXT    NOT NULL,
	primary_version        INTEGER NOT NULL CHECK (primary_version >= 1),
	min_decryption_version INTEGER NOT NULL CHECK (min_decryption_version >= 0),
	rotation_period_ns     INTEGER NOT NULL CHECK (rotation_period_ns >= 0),
	labels                 TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(labels)),
	wrapped_keyset         BLOB    NOT NULL,
	root_key_id            TEXT    NOT NULL,
	create_time            INTEGER NOT NULL,
	update_time            INTEGER NOT NULL,
	revision               INTEGER NOT NULL CHECK (revision >= 1)
) STRICT;

CREATE TABLE key_versions (
	key_name    TEXT    NOT NULL REFERENCES keys (name) ON DELETE CASCADE,
	number      INTEGER NOT NULL CHECK (number >= 1),
	tink_key_id INTEGER NOT NULL,
	create_time INTEGER NOT NULL,
	PRIMARY KEY (key_name, number)
) STRICT, WITHOUT ROWID;
