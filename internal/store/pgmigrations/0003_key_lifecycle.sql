-- Key deletion, usage limits and retirement, as in the SQLite schema.
--
-- deletion_time and destroy_time are NULL unless the key is
-- DELETION_SCHEDULED or DESTROYED. A DESTROYED key keeps its row as a
-- tombstone with a NULL wrapped_keyset, and never leaves that state
-- (UpdateKey checks; a constraint cannot see the old row). retire_after_ns
-- is a time.Duration; usage_limit 0 means the keyring's default.

ALTER TABLE keys
	ALTER COLUMN wrapped_keyset DROP NOT NULL,
	ADD COLUMN deletion_time         timestamptz,
	ADD COLUMN destroy_time          timestamptz,
	ADD COLUMN usage_limit           bigint NOT NULL DEFAULT 0 CHECK (usage_limit >= 0),
	ADD COLUMN retire_after_ns       bigint NOT NULL DEFAULT 0 CHECK (retire_after_ns >= 0),
	ADD COLUMN retire_after_versions bigint NOT NULL DEFAULT 0 CHECK (retire_after_versions BETWEEN 0 AND 4294967295),
	ADD CONSTRAINT keys_keyset_unless_destroyed
		CHECK ((state = 'DESTROYED') = (wrapped_keyset IS NULL)),
	ADD CONSTRAINT keys_deletion_time_iff_scheduled
		CHECK ((state = 'DELETION_SCHEDULED') = (deletion_time IS NOT NULL)),
	ADD CONSTRAINT keys_destroy_time_iff_destroyed
		CHECK ((state = 'DESTROYED') = (destroy_time IS NOT NULL));

-- Root-key rotation lists and counts the keys wrapped by one root key.
CREATE INDEX keys_by_root_key ON keys (root_key_id, name) WHERE state <> 'DESTROYED';
