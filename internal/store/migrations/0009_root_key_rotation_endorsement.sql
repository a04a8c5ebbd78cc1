-- The endorsement of each root-key rotation job (RootKeyRotation.Endorsement):
-- a digest of the job wrapped by its old root key, which replicas verify
-- before they follow the job. NULL for jobs recorded before this migration.
--
-- prev_id chains the jobs (RootKeyRotation.PrevID): the ID of the job started
-- before each one, '' for the first. The endorsement covers it, so that the
-- order of the jobs cannot be changed (seq alone is not endorsed). Jobs
-- recorded before this migration get theirs from seq. No two jobs have one
-- prev_id: the chain does not fork.

ALTER TABLE root_key_rotations ADD COLUMN endorsement BLOB CHECK (endorsement IS NULL OR length(endorsement) > 0);

ALTER TABLE root_key_rotations ADD COLUMN prev_id TEXT NOT NULL DEFAULT '';

UPDATE root_key_rotations SET prev_id = coalesce(
	(SELECT p.id FROM root_key_rotations AS p WHERE p.seq < root_key_rotations.seq ORDER BY p.seq DESC LIMIT 1), '');

CREATE UNIQUE INDEX root_key_rotations_prev_id ON root_key_rotations (prev_id);
