package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Filter selects events for Query. Zero fields select everything.
type Filter struct {
	// Principal matches the workload exactly, or the token subject (through
	// the Pseudonymizer given to Query; a pseudonym "h:..." matches as is).
	Principal string
	// Action matches Event.Action exactly.
	Action string
	// Key matches an event that used the key: a Resources entry equal to
	// it, or a KeyVersions entry "Key:N".
	Key string
	// From and To bound Event.Time: From <= Time < To. Zero means no bound.
	From, To time.Time
	// Limit stops Query after that many events; 0 means no limit.
	Limit int
}

// Query reads the log from src and calls fn, in order, with each event f
// selects, until fn returns an error (which Query returns), the log ends or
// Limit events were given. It does not verify the log: run Verify for
// that. pz pseudonymizes f.Principal to match subjects; nil matches
// workloads and pseudonyms only.
func Query(ctx context.Context, src Source, pz *Pseudonymizer, f Filter, fn func(Event) error) error {
	return query(ctx, src, pz, f, func(e Event, _ []byte) error { return fn(e) })
}

// QueryLines is Query giving each selected event's canonical line, as the
// log holds it (a JSON object whose hash a reader can check), rather than
// the decoded event. The line is valid until fn returns.
func QueryLines(ctx context.Context, src Source, pz *Pseudonymizer, f Filter, fn func(line []byte) error) error {
	return query(ctx, src, pz, f, func(_ Event, line []byte) error { return fn(line) })
}

func query(ctx context.Context, src Source, pz *Pseudonymizer, f Filter, fn func(Event, []byte) error) error {
	subject := ""
	if f.Principal != "" {
		subject = f.Principal
		if pz != nil && !strings.HasPrefix(f.Principal, pseudonymPrefix) {
			subject = pz.Subject(f.Principal)
		}
	}
	// Cheap tests on the raw line before decoding it.
	var action []byte
	if f.Action != "" {
		action = appendStringMember(nil, "action", f.Action)
	}
	given := 0
	for {
		it, err := src.Next(ctx)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if it.Checkpoint != nil {
			continue
		}
		if action != nil && !bytes.Contains(it.Line, action) {
			continue
		}
		var e Event
		if err := json.Unmarshal(it.Line, &e); err != nil {
			if it.LineNo > 0 {
				return fmt.Errorf("audit: query: line %d: %w", it.LineNo, err)
			}
			return fmt.Errorf("audit: query: %w", err)
		}
		if !f.matches(&e, subject) {
			continue
		}
		if err := fn(e, it.Line); err != nil {
			return err
		}
		given++
		if f.Limit > 0 && given >= f.Limit {
			return nil
		}
	}
}

func (f *Filter) matches(e *Event, subject string) bool {
	switch {
	case f.Principal != "" && e.Workload != f.Principal && e.Subject != subject:
		return false
	case f.Action != "" && e.Action != f.Action:
		return false
	case !f.From.IsZero() && e.Time.Before(f.From):
		return false
	case !f.To.IsZero() && !e.Time.Before(f.To):
		return false
	case f.Key != "" && !slices.Contains(e.Resources, f.Key) &&
		!slices.ContainsFunc(e.KeyVersions, func(kv string) bool {
			i := strings.LastIndexByte(kv, ':')
			return i >= 0 && kv[:i] == f.Key
		}):
		return false
	}
	return true
}
