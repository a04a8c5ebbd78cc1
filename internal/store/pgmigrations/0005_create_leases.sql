-- Leases of scheduled jobs (Store.AcquireLease), as in the SQLite schema:
-- holder holds the lease until expire_time, by the store's clock. A
-- released lease has no row.

CREATE TABLE leases (
	name        text COLLATE "C" NOT NULL PRIMARY KEY CHECK (octet_length(name) BETWEEN 1 AND 512),
	holder      text        NOT NULL CHECK (octet_length(holder) BETWEEN 1 AND 512),
	expire_time timestamptz NOT NULL
);
