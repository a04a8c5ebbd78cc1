-- Usage budget counters (Store.ConsumeBudget).
--
-- One row per (counter, window_start): used is the count of one fixed window
-- of one counter; ConsumeBudget never raises it past the limit it is given.
-- Times are INTEGER microseconds since the Unix epoch, UTC. window_end is
-- kept, and indexed, so that the rows of ended windows are found and deleted
-- cheaply.

CREATE TABLE budget_counts (
	counter      TEXT    NOT NULL CHECK (length(CAST(counter AS BLOB)) BETWEEN 1 AND 512),
	window_start INTEGER NOT NULL,
	window_end   INTEGER NOT NULL CHECK (window_end > window_start),
	used         INTEGER NOT NULL CHECK (used >= 1),
	PRIMARY KEY (counter, window_start)
) STRICT, WITHOUT ROWID;

CREATE INDEX budget_counts_by_end ON budget_counts (window_end);
