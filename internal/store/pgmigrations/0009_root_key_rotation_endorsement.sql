-- The endorsement of each root-key rotation job, as in the SQLite schema: a
-- digest of the job wrapped by its old root key, which replicas verify
-- before they follow the job. NULL for jobs recorded before this migration.

ALTER TABLE root_key_rotations ADD COLUMN endorsement bytea CHECK (endorsement IS NULL OR octet_length(endorsement) > 0);
