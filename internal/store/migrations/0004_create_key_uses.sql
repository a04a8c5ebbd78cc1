-- Encryptions reserved of each key version (Store.ReserveUses).
--
-- used never passes the limit ReserveUses is given. last_granted is what the
-- latest ReserveUses of the row added: its single upsert returns it, since
-- RETURNING sees only the new row. Rows outlive the versions they count
-- (UpdateKey rewrites key_versions), so they reference keys only.

CREATE TABLE key_uses (
	key_name     TEXT    NOT NULL REFERENCES keys (name) ON DELETE CASCADE,
	version      INTEGER NOT NULL CHECK (version BETWEEN 1 AND 4294967295),
	used         INTEGER NOT NULL CHECK (used >= 1),
	last_granted INTEGER NOT NULL CHECK (last_granted BETWEEN 1 AND used),
	PRIMARY KEY (key_name, version)
) STRICT, WITHOUT ROWID;
