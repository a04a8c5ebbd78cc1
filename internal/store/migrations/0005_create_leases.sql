-- Leases of scheduled jobs (Store.AcquireLease).
--
-- holder holds the lease named name until expire_time (INTEGER
-- microseconds since the Unix epoch, UTC, by the store's clock). A released
-- lease has no row.

CREATE TABLE leases (
	name        TEXT    NOT NULL PRIMARY KEY CHECK (length(CAST(name AS BLOB)) BETWEEN 1 AND 512),
	holder      TEXT    NOT NULL CHECK (length(CAST(holder AS BLOB)) BETWEEN 1 AND 512),
	expire_time INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
