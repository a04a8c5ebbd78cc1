-- The tamper-evident audit log (Store.AppendAudit), as in the SQLite
-- schema: (chain, seq) is unique and orders a writer's chain; data is the
-- encoded event, opaque to the store; hash is its chain hash. A checkpoint
-- states a chain's head hash at seq, with a tag made by the root key
-- root_key_id. chain is COLLATE "C", so that chains order bytewise.

CREATE TABLE audit_events (
	chain text COLLATE "C" NOT NULL CHECK (chain <> ''),
	seq   bigint           NOT NULL CHECK (seq >= 1),
	time  timestamptz      NOT NULL,
	data  bytea            NOT NULL CHECK (length(data) > 0),
	hash  bytea            NOT NULL CHECK (length(hash) > 0),
	CONSTRAINT audit_events_pkey PRIMARY KEY (chain, seq)
);

CREATE TABLE audit_checkpoints (
	chain       text COLLATE "C" NOT NULL CHECK (chain <> ''),
	seq         bigint           NOT NULL CHECK (seq >= 1),
	time        timestamptz      NOT NULL,
	hash        bytea            NOT NULL CHECK (length(hash) > 0),
	root_key_id text             NOT NULL CHECK (root_key_id <> ''),
	tag         bytea            NOT NULL CHECK (length(tag) > 0),
	CONSTRAINT audit_checkpoints_pkey PRIMARY KEY (chain, seq)
);
