-- Key deletion, usage limits and retirement.
--
-- deletion_time and destroy_time are INTEGER microseconds since the Unix
-- epoch, UTC, and NULL unless the key is DELETION_SCHEDULED or DESTROYED.
-- A DESTROYED key keeps its row as a tombstone, with an empty
-- wrapped_keyset (the column stays NOT NULL, which SQLite cannot relax
-- without rebuilding the table); the triggers below keep it so.
-- retire_after_ns is a time.Duration; usage_limit 0 means the keyring's
-- default.

ALTER TABLE keys ADD COLUMN deletion_time INTEGER
	CHECK ((state = 'DELETION_SCHEDULED') = (deletion_time IS NOT NULL));
ALTER TABLE keys ADD COLUMN destroy_time INTEGER
	CHECK ((state = 'DESTROYED') = (destroy_time IS NOT NULL));
ALTER TABLE keys ADD COLUMN usage_limit INTEGER NOT NULL DEFAULT 0
	CHECK (usage_limit >= 0);
ALTER TABLE keys ADD COLUMN retire_after_ns INTEGER NOT NULL DEFAULT 0
	CHECK (retire_after_ns >= 0);
ALTER TABLE keys ADD COLUMN retire_after_versions INTEGER NOT NULL DEFAULT 0
	CHECK (retire_after_versions BETWEEN 0 AND 4294967295);

-- A key has a wrapped keyset exactly when it is not DESTROYED, and a
-- DESTROYED key never leaves that state.
CREATE TRIGGER keys_keyset_insert BEFORE INSERT ON keys
WHEN (NEW.state = 'DESTROYED') <> (length(NEW.wrapped_keyset) = 0)
BEGIN
	SELECT RAISE(ABORT, 'keys: a key has a wrapped keyset exactly when it is not DESTROYED');
END;

CREATE TRIGGER keys_keyset_update BEFORE UPDATE OF state, wrapped_keyset ON keys
WHEN (NEW.state = 'DESTROYED') <> (length(NEW.wrapped_keyset) = 0)
	OR (OLD.state = 'DESTROYED' AND NEW.state <> 'DESTROYED')
BEGIN
	SELECT RAISE(ABORT, 'keys: a DESTROYED key stays DESTROYED, with no wrapped keyset');
END;

-- Root-key rotation lists and counts the keys wrapped by one root key.
CREATE INDEX keys_by_root_key ON keys (root_key_id, name) WHERE state <> 'DESTROYED';
