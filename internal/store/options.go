package store

import "time"

// Option configures a store when it is opened.
type Option func(*options)

type options struct {
	now func() time.Time
	// sqliteBusyTimeout is how long a SQLite connection waits for a lock
	// another process holds; tests lower it.
	sqliteBusyTimeout time.Duration
}

func newOptions(opts []Option) options {
	o := options{now: time.Now, sqliteBusyTimeout: 10 * time.Second}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// WithClock makes the store read the time from now instead of time.Now: for
// CreateTime and UpdateTime, which budget windows have ended, when leases
// expire and the times of root-key rotation jobs. Tests use it to pin the
// time.
func WithClock(now func() time.Time) Option {
	return func(o *options) {
		if now != nil {
			o.now = now
		}
	}
}

// withSQLiteBusyTimeout sets how long a SQLite store waits for a lock
// another process holds before it fails with ErrUnavailable; tests use it.
func withSQLiteBusyTimeout(d time.Duration) Option {
	return func(o *options) { o.sqliteBusyTimeout = d }
}
