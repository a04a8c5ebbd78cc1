-- Encryptions reserved of each key version (Store.ReserveUses), as in the
-- SQLite schema: last_granted is what the latest ReserveUses of the row
-- added, which its single upsert returns. Rows outlive the versions they
-- count, so they reference keys only.

CREATE TABLE key_uses (
	key_name     text COLLATE "C" NOT NULL REFERENCES keys (name) ON DELETE CASCADE,
	version      bigint NOT NULL CHECK (version BETWEEN 1 AND 4294967295),
	used         bigint NOT NULL CHECK (used >= 1),
	last_granted bigint NOT NULL CHECK (last_granted BETWEEN 1 AND used),
	PRIMARY KEY (key_name, version)
);
