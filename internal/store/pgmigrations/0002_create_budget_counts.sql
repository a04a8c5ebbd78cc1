-- Usage budget counters (Store.ConsumeBudget), as in the SQLite schema.
--
-- One row per (counter, window_start): used is the count of one fixed window
-- of one counter. counter is COLLATE "C", so that rows order bytewise, the
-- order in which ConsumeBudget locks them. window_end is the latest end any
-- caller gave for the window; it is indexed so that the rows of ended
-- windows are found and deleted cheaply. A row holds used = 0 only inside
-- the ConsumeBudget transaction that created it.

CREATE TABLE budget_counts (
	counter      text COLLATE "C" NOT NULL CHECK (octet_length(counter) BETWEEN 1 AND 512),
	window_start timestamptz NOT NULL,
	window_end   timestamptz NOT NULL CHECK (window_end > window_start),
	used         bigint      NOT NULL CHECK (used >= 0),
	PRIMARY KEY (counter, window_start)
);

CREATE INDEX budget_counts_by_end ON budget_counts (window_end);
