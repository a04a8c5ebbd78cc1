package audit

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
)

// FileSink appends the log to a JSON-lines file: one event per line, and
// checkpoints as lines of their own ({"type":"checkpoint",...}). Each batch
// is one write and one fsync. A batch that fails (disk full, read-only file
// system, I/O error) is cut off the file again, so that the file holds
// exactly the batches that succeeded; when even that fails, every later
// Append fails until it succeeds.
//
// One FileSink (and one process) should write a file. The file is created
// with mode 0600.
type FileSink struct {
	mu      sync.Mutex
	f       *os.File
	path    string
	regular bool
	size    int64 // the end of the last batch that succeeded
	dirty   bool  // the file may hold more than size bytes
	heads   map[string]head
	// scanned is set once a scan read the whole file: heads then holds
	// every chain, and latest the last checkpoint of each that has one.
	scanned bool
	latest  map[string]Checkpoint
	broken  map[string]error // chains whose last event line is malformed
}

type head struct {
	seq  uint64
	hash Digest
}

var _ Sink = (*FileSink)(nil)

// OpenFileSink opens the file at path for appending, creating it (mode
// 0600) when missing. A last line cut short by a crash is removed: it was
// never acknowledged.
func OpenFileSink(ctx context.Context, path string) (*FileSink, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("open audit file: %w", err)
	}
	_, statErr := os.Stat(path)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open audit file: %w", err)
	}
	s := &FileSink{f: f, path: path, heads: map[string]head{}}
	if err := s.init(errors.Is(statErr, os.ErrNotExist)); err != nil {
		f.Close()
		return nil, fmt.Errorf("open audit file %s: %w", path, err)
	}
	return s, nil
}

func (s *FileSink) init(created bool) error {
	fi, err := s.f.Stat()
	if err != nil {
		return err
	}
	s.regular = fi.Mode().IsRegular()
	if !s.regular {
		return nil
	}
	if created {
		if err := syncDir(filepath.Dir(s.path)); err != nil {
			return err
		}
	}
	s.size = fi.Size()
	if s.size == 0 {
		return nil
	}
	// Find the end of the last complete line.
	end, err := lastNewline(s.f, s.size)
	if err != nil {
		return err
	}
	if end != s.size {
		if err := s.f.Truncate(end); err != nil {
			return fmt.Errorf("cut an incomplete last line: %w", err)
		}
		if err := s.f.Sync(); err != nil {
			return err
		}
		s.size = end
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// lastNewline returns the offset just past the last newline before size,
// or 0.
func lastNewline(f *os.File, size int64) (int64, error) {
	buf := make([]byte, 64<<10)
	for end := size; end > 0; {
		start := max(0, end-int64(len(buf)))
		b := buf[:end-start]
		if _, err := f.ReadAt(b, start); err != nil {
			return 0, err
		}
		if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
			return start + int64(i) + 1, nil
		}
		end = start
	}
	return 0, nil
}

// Head implements [Sink.Head]: from what this sink appended, or else from
// the last event line of chain in the file.
func (s *FileSink) Head(ctx context.Context, chain string) (uint64, Digest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return 0, Digest{}, err
	}
	if s.f == nil {
		return 0, Digest{}, errSinkClosed
	}
	if h, ok := s.heads[chain]; ok {
		return h.seq, h.hash, nil
	}
	if s.regular && !s.scanned {
		if err := s.scan(ctx, chain); err != nil {
			return 0, Digest{}, fmt.Errorf("audit file %s: %w", s.path, err)
		}
	}
	if err := s.broken[chain]; err != nil {
		return 0, Digest{}, fmt.Errorf("audit file %s: %w", s.path, err)
	}
	h := s.heads[chain] // none: a new chain
	s.heads[chain] = h
	return h.seq, h.hash, nil
}

// LatestCheckpoints implements [CheckpointLister]: the file is read once,
// backwards (Head of a new chain reads it all already), and what this sink
// appends since is added.
func (s *FileSink) LatestCheckpoints(ctx context.Context) ([]Checkpoint, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if s.f == nil {
		return nil, errSinkClosed
	}
	if !s.regular {
		return nil, nil
	}
	if !s.scanned {
		if err := s.scan(ctx, ""); err != nil {
			return nil, fmt.Errorf("audit file %s: %w", s.path, err)
		}
	}
	out := make([]Checkpoint, 0, len(s.latest))
	for _, c := range s.latest {
		out = append(out, c)
	}
	return out, nil
}

// scan reads the file backwards, noting the head of every chain it meets
// (its last event line) that heads lacks, until it meets the last event of
// chain stop, or to the start of the file: then it sets scanned and latest.
// A malformed line is skipped, unless it is stop's last.
func (s *FileSink) scan(ctx context.Context, stop string) error {
	seen := map[string]bool{}
	latest := map[string]Checkpoint{}
	onLine := func(line []byte) (done bool, err error) {
		if bytes.HasPrefix(line, []byte(checkpointPrefix)) {
			if cp, err := parseCheckpoint(line); err == nil {
				if _, ok := latest[cp.Chain]; !ok {
					latest[cp.Chain] = *cp
				}
			}
			return false, nil
		}
		rest, ok := bytes.CutPrefix(line, []byte(`{"chain":"`))
		i := bytes.IndexByte(rest, '"')
		if !ok || i <= 0 || seen[string(rest[:i])] {
			return false, nil
		}
		chain := string(rest[:i])
		seen[chain] = true
		h, err := parseHead(line)
		if err != nil {
			err = fmt.Errorf("last event of chain %q: %w", chain, err)
			if chain == stop {
				return false, err
			}
			if s.broken == nil {
				s.broken = map[string]error{}
			}
			s.broken[chain] = err
			return false, nil
		}
		if _, ok := s.heads[chain]; !ok {
			s.heads[chain] = head{seq: h.seq, hash: h.hash}
		}
		return chain == stop, nil
	}
	const chunk = 256 << 10
	var carry []byte // the start of a line that begins in an earlier chunk
	for end := s.size; end > 0; {
		if err := ctx.Err(); err != nil {
			return err
		}
		start := max(0, end-chunk)
		b := make([]byte, end-start, int(end-start)+len(carry))
		if _, err := s.f.ReadAt(b, start); err != nil {
			return err
		}
		b = append(b, carry...)
		carry = nil
		for {
			i := bytes.LastIndexByte(b[:max(0, len(b)-1)], '\n')
			if i < 0 && start > 0 {
				carry = b
				break
			}
			line := bytes.TrimSuffix(b[i+1:], []byte("\n"))
			if done, err := onLine(line); done || err != nil {
				return err
			}
			if i < 0 {
				break
			}
			b = b[:i+1]
		}
		end = start
	}
	s.scanned, s.latest = true, latest
	return nil
}

// Append implements [Sink.Append]: one write of every line, then fsync.
func (s *FileSink) Append(ctx context.Context, entries []Entry, cp *Checkpoint) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.f == nil {
		return errSinkClosed
	}
	if s.dirty {
		if err := s.cut(); err != nil {
			return fmt.Errorf("audit file %s: remove a failed write: %w", s.path, err)
		}
	}
	n := 0
	for i := range entries {
		n += len(entries[i].Line) + 1
	}
	buf := make([]byte, 0, n+512)
	for i := range entries {
		buf = append(buf, entries[i].Line...)
		buf = append(buf, '\n')
	}
	if cp != nil {
		buf = appendCheckpoint(buf, cp)
		buf = append(buf, '\n')
	}
	_, err := s.f.Write(buf)
	if err == nil {
		err = s.f.Sync()
	}
	if err != nil {
		s.dirty = true
		s.cut() //nolint:errcheck // retried before the next write
		return fmt.Errorf("audit file %s: %w", s.path, err)
	}
	s.size += int64(len(buf))
	for i := range entries {
		s.heads[entries[i].Chain] = head{seq: entries[i].Seq, hash: entries[i].Hash}
	}
	if cp != nil && s.latest != nil {
		s.latest[cp.Chain] = *cp
	}
	return nil
}

// cut truncates the file to the end of the last batch that succeeded.
func (s *FileSink) cut() error {
	if !s.regular {
		s.dirty = false // nothing to cut on a device or pipe
		return nil
	}
	if err := s.f.Truncate(s.size); err != nil {
		return err
	}
	if err := s.f.Sync(); err != nil {
		return err
	}
	s.dirty = false
	return nil
}

// Close closes the file. Calls after Close fail.
func (s *FileSink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	return err
}

// FileSource reads a JSON-lines log, streaming: one line in memory at a
// time.
type FileSource struct {
	r      *bufio.Reader
	lineNo int64
	long   []byte
}

var _ Source = (*FileSource)(nil)

// NewFileSource returns a source that reads the log from r.
func NewFileSource(r io.Reader) *FileSource {
	return &FileSource{r: bufio.NewReaderSize(r, 1<<20)}
}

// Next implements [Source.Next]. A last line without a newline is read
// like the others.
func (s *FileSource) Next(ctx context.Context) (Item, error) {
	if s.lineNo&0xfff == 0 {
		if err := ctx.Err(); err != nil {
			return Item{}, err
		}
	}
	line, err := s.r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		s.long = append(s.long[:0], line...)
		for errors.Is(err, bufio.ErrBufferFull) {
			line, err = s.r.ReadSlice('\n')
			s.long = append(s.long, line...)
		}
		line = s.long
	}
	if err != nil && (!errors.Is(err, io.EOF) || len(line) == 0) {
		return Item{}, err
	}
	s.lineNo++
	line = bytes.TrimSuffix(line, []byte("\n"))
	if bytes.HasPrefix(line, []byte(checkpointPrefix)) {
		cp, err := parseCheckpoint(line)
		if err != nil {
			return Item{}, &VerifyError{Line: s.lineNo, Reason: err.Error(), Err: ErrTampered}
		}
		return Item{Checkpoint: cp, LineNo: s.lineNo}, nil
	}
	return Item{Line: line, LineNo: s.lineNo}, nil
}
