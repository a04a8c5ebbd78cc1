package store

import "time"

// Option configures a store when it is opened.
type Option func(*options)

type options struct {
	now func() time.Time
}

func newOptions(opts []Option) options {
	o := options{now: time.Now}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// WithClock makes the store read the time from now instead of time.Now, for
// CreateTime and UpdateTime. Tests use it to pin the time.
func WithClock(now func() time.Time) Option {
	return func(o *options) {
		if now != nil {
			o.now = now
		}
	}
}
