-- Root-key rotation jobs (Store.StartRootKeyRotation), as in the SQLite
-- schema: seq orders the jobs by start; end_time is NULL while the job runs;
-- the partial unique index lets one job run at a time.

CREATE TABLE root_key_rotations (
	seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	id          text        NOT NULL CHECK (id <> ''),
	from_uri    text        NOT NULL CHECK (from_uri <> ''),
	to_uri      text        NOT NULL CHECK (to_uri <> ''),
	from_id     text        NOT NULL CHECK (from_id <> ''),
	to_id       text        NOT NULL CHECK (to_id <> '' AND to_id <> from_id),
	state       text        NOT NULL CHECK (state IN ('RUNNING', 'DONE')),
	total       bigint      NOT NULL CHECK (total >= 0),
	rewrapped   bigint      NOT NULL CHECK (rewrapped >= 0),
	start_time  timestamptz NOT NULL,
	update_time timestamptz NOT NULL,
	end_time    timestamptz CHECK ((state = 'DONE') = (end_time IS NOT NULL)),
	CONSTRAINT root_key_rotations_id_unique UNIQUE (id)
);

CREATE UNIQUE INDEX root_key_rotations_one_running ON root_key_rotations (state) WHERE state = 'RUNNING';
