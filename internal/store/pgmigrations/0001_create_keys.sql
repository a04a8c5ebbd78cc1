-- Named keys and their versions.
--
-- name is COLLATE "C" so that it orders bytewise, as Go compares strings
-- (the database encoding is UTF8, whose byte order is code point order).
-- Times are timestamptz: UTC instants to the microsecond. type and state hold
-- KeyType.String and KeyState.String; labels is a JSON object of strings.
-- Version numbers and Tink key ids are uint32s, kept in bigint.
-- wrapped_keyset is opaque to the store: the keyset, wrapped by the root key
-- named root_key_id.

CREATE TABLE keys (
	name                   text COLLATE "C" NOT NULL PRIMARY KEY,
	type                   text        NOT NULL,
	state                  text        NOT NULL,
	primary_version        bigint      NOT NULL CHECK (primary_version BETWEEN 1 AND 4294967295),
	min_decryption_version bigint      NOT NULL CHECK (min_decryption_version BETWEEN 0 AND 4294967295),
	rotation_period_ns     bigint      NOT NULL CHECK (rotation_period_ns >= 0),
	labels                 jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(labels) = 'object'),
	wrapped_keyset         bytea       NOT NULL,
	root_key_id            text        NOT NULL,
	create_time            timestamptz NOT NULL,
	update_time            timestamptz NOT NULL,
	revision               bigint      NOT NULL CHECK (revision >= 1)
);

CREATE TABLE key_versions (
	key_name    text COLLATE "C" NOT NULL REFERENCES keys (name) ON DELETE CASCADE,
	number      bigint      NOT NULL CHECK (number BETWEEN 1 AND 4294967295),
	tink_key_id bigint      NOT NULL CHECK (tink_key_id BETWEEN 0 AND 4294967295),
	create_time timestamptz NOT NULL,
	PRIMARY KEY (key_name, number)
);
