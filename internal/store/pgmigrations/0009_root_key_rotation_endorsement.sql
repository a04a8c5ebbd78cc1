-- The endorsement of each root-key rotation job, as in the SQLite schema: a
-- digest of the job wrapped by its old root key, which replicas verify
-- before they follow the job. NULL for jobs recorded before this migration.
--
-- prev_id chains the jobs (RootKeyRotation.PrevID): the ID of the job started
-- before each one, '' for the first. The endorsement covers it, so that the
-- order of the jobs cannot be changed (seq alone is not endorsed). Jobs
-- recorded before this migration get theirs from seq. No two jobs have one
-- prev_id: the chain does not fork.

ALTER TABLE root_key_rotations ADD COLUMN endorsement bytea CHECK (endorsement IS NULL OR octet_length(endorsement) > 0);

ALTER TABLE root_key_rotations ADD COLUMN prev_id text NOT NULL DEFAULT '';

UPDATE root_key_rotations AS r SET prev_id = coalesce(
	(SELECT p.id FROM root_key_rotations AS p WHERE p.seq < r.seq ORDER BY p.seq DESC LIMIT 1), '');

ALTER TABLE root_key_rotations ADD CONSTRAINT root_key_rotations_prev_id_unique UNIQUE (prev_id);
