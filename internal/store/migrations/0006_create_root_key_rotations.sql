-- Root-key rotation jobs (Store.StartRootKeyRotation).
--
-- seq orders the jobs by start; the latest is the one with the highest.
-- Times are INTEGER microseconds since the Unix epoch, UTC; end_time is NULL
-- while the job runs. The partial unique index lets one job run at a time.

CREATE TABLE root_key_rotations (
	seq         INTEGER NOT NULL PRIMARY KEY,
	id          TEXT    NOT NULL UNIQUE CHECK (id <> ''),
	from_uri    TEXT    NOT NULL CHECK (from_uri <> ''),
	to_uri      TEXT    NOT NULL CHECK (to_uri <> ''),
	from_id     TEXT    NOT NULL CHECK (from_id <> ''),
	to_id       TEXT    NOT NULL CHECK (to_id <> '' AND to_id <> from_id),
	state       TEXT    NOT NULL CHECK (state IN ('RUNNING', 'DONE')),
	total       INTEGER NOT NULL CHECK (total >= 0),
	rewrapped   INTEGER NOT NULL CHECK (rewrapped >= 0),
	start_time  INTEGER NOT NULL,
	update_time INTEGER NOT NULL,
	end_time    INTEGER CHECK ((state = 'DONE') = (end_time IS NOT NULL))
) STRICT;

CREATE UNIQUE INDEX root_key_rotations_one_running ON root_key_rotations (state) WHERE state = 'RUNNING';
