-- The endorsement of each root-key rotation job (RootKeyRotation.Endorsement):
-- a digest of the job wrapped by its old root key, which replicas verify
-- before they follow the job. NULL for jobs recorded before this migration.

ALTER TABLE root_key_rotations ADD COLUMN endorsement BLOB CHECK (endorsement IS NULL OR length(endorsement) > 0);
