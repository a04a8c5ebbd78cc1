-- The tamper-evident audit log (Store.AppendAudit), written by package
-- internal/audit.
--
-- One row per event: (chain, seq) is unique and orders a writer's chain.
-- data is the encoded event, opaque to the store; hash is its chain hash.
-- Times are INTEGER microseconds since the Unix epoch, UTC. A checkpoint
-- states a chain's head hash at seq, with a tag made by the root key
-- root_key_id.
--
-- audit_events is a rowid table: its rows (a few hundred bytes of data)
-- are too large for WITHOUT ROWID to pay, and appends go to the end of it.

CREATE TABLE audit_events (
	chain TEXT    NOT NULL CHECK (chain <> ''),
	seq   INTEGER NOT NULL CHECK (seq >= 1),
	time  INTEGER NOT NULL,
	data  BLOB    NOT NULL CHECK (length(data) > 0),
	hash  BLOB    NOT NULL CHECK (length(hash) > 0),
	PRIMARY KEY (chain, seq)
) STRICT;

CREATE TABLE audit_checkpoints (
	chain       TEXT    NOT NULL CHECK (chain <> ''),
	seq         INTEGER NOT NULL CHECK (seq >= 1),
	time        INTEGER NOT NULL,
	hash        BLOB    NOT NULL CHECK (length(hash) > 0),
	root_key_id TEXT    NOT NULL CHECK (root_key_id <> ''),
	tag         BLOB    NOT NULL CHECK (length(tag) > 0),
	PRIMARY KEY (chain, seq)
) STRICT, WITHOUT ROWID;
