package main

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tresorkms/tresor/internal/audit"
	tresorv1 "github.com/tresorkms/tresor/proto/tresor/v1"
)

// devConfigFile is the tresor.yaml `tresor dev` wrote in TestMain: the
// shared store, whose audit log every dev server of these tests writes.
func devConfigFile() string {
	return filepath.Join(filepath.Dir(filepath.Dir(devCfg.TLS.CertFile)), "tresor.yaml")
}

// verifiedRE reads the summary line of `tresor audit verify`.
var verifiedRE = regexp.MustCompile(`^audit log verifies: (\d+) events in (\d+) chains, (\d+) checkpoints, (?:\d+ anchors, )?(\d+) events after the last checkpoint`)

type verifySummary struct{ events, chains, checkpoints, uncovered int64 }

// auditVerify runs `tresor audit verify` with args and parses its summary.
func auditVerify(t *testing.T, args ...string) (verifySummary, string, error) {
	t.Helper()
	out, err := run(t, "", append([]string{"audit", "verify"}, args...)...)
	if err != nil {
		return verifySummary{}, out, err
	}
	m := verifiedRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("tresor audit verify %s printed %q, want the summary line", strings.Join(args, " "), out)
	}
	n := func(s string) int64 {
		v, _ := strconv.ParseInt(s, 10, 64)
		return v
	}
	return verifySummary{n(m[1]), n(m[2]), n(m[3]), n(m[4])}, out, nil
}

// TestAuditVerifyStore: `tresor audit verify` reads the audit log from the
// SQLite store while the dev server is still writing it (WAL: one writer,
// other readers), and counts the events of the calls just made.
func TestAuditVerifyStore(t *testing.T) {
	conn := startDev(t, devCfg)
	with := func(args ...string) []string { return append(args, conn...) }
	cfgFile := devConfigFile()

	before, out, err := auditVerify(t, "--config", cfgFile)
	if err != nil {
		t.Fatalf("tresor audit verify --config %s: err = %v, want nil", cfgFile, err)
	}
	t.Logf("before: %s", out)
	key := uniqueName(t, "audited")
	mustRun(t, "", with("keys", "create", key)...)
	const calls = 5
	for range calls {
		ct := mustRun(t, "x", with("encrypt", "--key", key)...)
		mustRun(t, ct, with("decrypt")...)
	}
	after, out, err := auditVerify(t, "--config", cfgFile)
	if err != nil {
		t.Fatalf("tresor audit verify --config %s after %d calls: err = %v, want nil", cfgFile, 1+2*calls, err)
	}
	if after.events < before.events+1+2*calls || after.chains < 1 {
		t.Errorf("tresor audit verify after %d calls = %+v, before %+v; want at least %d more events", 1+2*calls, after, before, 1+2*calls)
	}
	if !strings.Contains(out, "  chain ") {
		t.Errorf("tresor audit verify = %q, want a line per chain", out)
	}

	// A concurrent writer: the server records events while verify reads.
	cc := tresorv1.NewCryptoServiceClient(devConn(t, devCfg, conn[1], "audit-writer"))
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var writes int
	var writeErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			if _, err := cc.Encrypt(ctx, &tresorv1.EncryptRequest{Key: key, Plaintext: []byte("y")}); err != nil {
				if ctx.Err() == nil {
					writeErr = err
				}
				return
			}
			writes++
		}
	}()
	last := after
	for i := range 3 {
		got, out, err := auditVerify(t, "--config", cfgFile)
		if err != nil {
			t.Errorf("tresor audit verify #%d with a concurrent writer: err = %v, want nil", i+1, err)
			continue
		}
		if got.events < last.events {
			t.Errorf("tresor audit verify #%d = %+v, after %+v; want no fewer events:\n%s", i+1, got, last, out)
		}
		last = got
	}
	stop()
	wg.Wait()
	if writeErr != nil || writes == 0 {
		t.Errorf("concurrent Encrypt: %d calls, err = %v; want calls and no error", writes, writeErr)
	}
	t.Logf("%d Encrypt calls during the verifies", writes)
	if got, _, err := auditVerify(t, "--config", cfgFile); err != nil || got.events < after.events+int64(writes) {
		t.Errorf("tresor audit verify after %d concurrent calls = %+v, %v; want at least %d events", writes, got, err, after.events+int64(writes))
	}
}

// TestAuditQuery: `tresor audit query` filters the store's log by
// principal (workload or token subject), action and key, and prints events
// that hold no plaintext and no clear subject.
func TestAuditQuery(t *testing.T) {
	conn := startDev(t, devCfg)
	with := func(args ...string) []string { return append(args, conn...) }
	key := uniqueName(t, "queried")
	mustRun(t, "", with("keys", "create", key)...)
	plaintext := uniqueName(t, "secret-plaintext")
	for range 3 {
		mustRun(t, plaintext, with("encrypt", "--key", key)...)
	}
	cfgFile := devConfigFile()
	tests := []struct {
		name string
		args []string
		want int // events
	}{
		{"workload and action", []string{"--principal", devClientID, "--action", "Encrypt", "--limit", "2"}, 2},
		{"key", []string{"--key", key, "--action", "Encrypt"}, 3},
		{"token subject", []string{"--principal", "cli-test", "--key", key}, 4},
		{"key and limit", []string{"--key", key, "--limit", "1"}, 1},
		{"another workload", []string{"--principal", "spiffe://tresor.dev/nobody", "--key", key}, 0},
		{"future", []string{"--key", key, "--from", time.Now().Add(time.Hour).Format(time.RFC3339)}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"audit", "query", "--config", cfgFile}, tt.args...)
			out := mustRun(t, "", args...)
			got := lines(out)
			if len(got) != tt.want {
				t.Fatalf("tresor %s printed %d events, want %d:\n%s", strings.Join(args, " "), len(got), tt.want, out)
			}
			for _, secret := range []string{plaintext, base64.StdEncoding.EncodeToString([]byte(plaintext)), `"cli-test"`} {
				if strings.Contains(out, secret) {
					t.Errorf("tresor %s output holds %q:\n%s", strings.Join(args, " "), secret, out)
				}
			}
			for _, l := range got {
				var e audit.Event
				if err := json.Unmarshal([]byte(l), &e); err != nil {
					t.Fatalf("tresor %s printed %q, want JSON events: %v", strings.Join(args, " "), l, err)
				}
				if e.Workload != devClientID || (slices.Contains(tt.args, "--action") && e.Action != "Encrypt") ||
					(slices.Contains(tt.args, "--key") && !slices.Contains(e.Resources, key)) || !strings.HasPrefix(e.Subject, "h:") {
					t.Errorf("tresor %s printed %+v, want an event of %s matching %v with a pseudonymous subject", strings.Join(args, " "), e, devClientID, tt.args)
				}
			}
		})
	}
	if _, err := run(t, "", "audit", "query", "--config", cfgFile, "--from", "yesterday"); err == nil || !strings.Contains(err.Error(), "--from") {
		t.Errorf("tresor audit query --from yesterday: err = %v, want an error naming --from", err)
	}
	if _, err := run(t, "", "audit", "verify"); err == nil || !strings.Contains(err.Error(), "config") {
		t.Errorf("tresor audit verify without --config: err = %v, want an error naming --config", err)
	}
}

// auditFileLog serves the dev configuration with the audit log in a JSON
// lines file only (a checkpoint every 4 events), makes some calls, stops
// the server (its final checkpoint) and returns the file's lines and chain.
func auditFileLog(t *testing.T) (path string, lines []string, chain string) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "audit.jsonl")
	chain = uniqueName(t, "file-chain")
	t.Run("write the log", func(t *testing.T) {
		cfg := devCfg
		cfg.Audit.Store = false
		cfg.Audit.File = path
		cfg.Audit.Chain = chain
		cfg.Audit.CheckpointEvery = 4
		cfg.Audit.CheckpointInterval = time.Hour
		addr := serveInProcess(t, cfg, slog.New(slog.DiscardHandler))
		f := devClient(t, cfg, addr, "audit-file-test")
		with := func(args ...string) []string {
			return append(args, "--addr", f.addr, "--ca", f.ca, "--cert", f.cert, "--key-file", f.key, "--token", f.token)
		}
		key := uniqueName(t, "filed")
		mustRun(t, "", with("keys", "create", key)...)
		for range 5 {
			ct := mustRun(t, "z", with("encrypt", "--key", key)...)
			mustRun(t, ct, with("decrypt")...)
		}
	}) // the server stops when the subtest ends
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines = strings.SplitAfter(string(b), "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	return path, lines, chain
}

const checkpointLinePrefix = `{"type":"checkpoint",`

func isCheckpointLine(l string) bool { return strings.HasPrefix(l, checkpointLinePrefix) }

// seqOf is the seq of an event or checkpoint line.
func seqOf(t *testing.T, l string) uint64 {
	t.Helper()
	m := regexp.MustCompile(`"seq":(\d+),`).FindStringSubmatch(l)
	if m == nil {
		t.Fatalf("line %q has no seq", l)
	}
	n, _ := strconv.ParseUint(m[1], 10, 64)
	return n
}

// resealFrom rewrites the event lines from index from on with hashes and
// prevs consistent again, and gives each later checkpoint the new hash of
// its seq, as someone who can write the file but not use the root key
// can: SHA-256(prev || the line without its hash member, closed).
func resealFrom(t *testing.T, lines []string, from int) {
	t.Helper()
	const hashSuffix = len(`,"hash":"`) + 64 + len(`"}`)
	hashOf := func(l string) string { l = strings.TrimSuffix(l, "\n"); return l[len(l)-66 : len(l)-2] }
	var prev string
	for i := from - 1; i >= 0; i-- {
		if !isCheckpointLine(lines[i]) {
			prev = hashOf(lines[i])
			break
		}
	}
	if prev == "" {
		prev = strings.Repeat("0", 64)
	}
	for i := from; i < len(lines); i++ {
		l := strings.TrimSuffix(lines[i], "\n")
		if isCheckpointLine(l) {
			l = regexp.MustCompile(`"hash":"[0-9a-f]{64}"`).ReplaceAllString(l, `"hash":"`+prev+`"`)
			lines[i] = l + "\n"
			continue
		}
		l = regexp.MustCompile(`"prev":"[0-9a-f]{64}"`).ReplaceAllString(l, `"prev":"`+prev+`"`)
		p, _ := hex.DecodeString(prev)
		sum := sha256.Sum256(append(p, l[:len(l)-hashSuffix]+"}"...))
		prev = hex.EncodeToString(sum[:])
		lines[i] = l[:len(l)-66] + prev + `"}` + "\n"
	}
}

// TestAuditVerifyFile: `tresor audit verify --file` passes the file a
// server wrote and names the first bad line and seq of every tampering.
func TestAuditVerifyFile(t *testing.T) {
	cfgFile := devConfigFile()
	path, orig, chain := auditFileLog(t)
	var events, checkpoints int64
	for _, l := range orig {
		if isCheckpointLine(l) {
			checkpoints++
		} else {
			events++
		}
	}
	if events < 11 || checkpoints < 3 || !isCheckpointLine(orig[len(orig)-1]) {
		t.Fatalf("the audit file has %d events and %d checkpoints, want at least 11 and 3, the last line a checkpoint:\n%s", events, checkpoints, strings.Join(orig, ""))
	}
	got, out, err := auditVerify(t, "--config", cfgFile, "--file", path)
	if err != nil || got != (verifySummary{events, 1, checkpoints, 0}) || !strings.Contains(out, "chain "+chain+":") {
		t.Fatalf("tresor audit verify --file of the untampered log = %+v, %v:\n%s\nwant %d events in chain %s, %d checkpoints, none uncovered", got, err, out, events, chain, checkpoints)
	}

	qargs := []string{"audit", "query", "--config", cfgFile, "--file", path, "--action", "Decrypt"}
	if got := lines(mustRun(t, "", qargs...)); len(got) != 5 || !strings.Contains(got[0], `"chain":"`+chain+`"`) {
		t.Errorf("tresor %s printed %d events, want the 5 Decrypt events of chain %s:\n%s", strings.Join(qargs, " "), len(got), chain, strings.Join(got, "\n"))
	}

	// Indexes (0-based) of lines to tamper with: an event in the middle
	// followed by another event, and the first checkpoint.
	mid := -1
	for i := len(orig) / 2; i+1 < len(orig); i++ {
		if !isCheckpointLine(orig[i]) && !isCheckpointLine(orig[i+1]) {
			mid = i
			break
		}
	}
	firstCP := slices.IndexFunc(orig, isCheckpointLine)
	if mid < 0 || firstCP < 0 {
		t.Fatalf("no two events in a row after the middle, or no checkpoint:\n%s", strings.Join(orig, ""))
	}
	midSeq := seqOf(t, orig[mid])
	nextCP := mid + slices.IndexFunc(orig[mid:], isCheckpointLine)

	tests := []struct {
		name     string
		tamper   func(l []string) []string
		wantLine int // 1-based
		wantSeq  uint64
		wantText string
	}{
		{"one byte changed", func(l []string) []string {
			// The last digit of the time, just before its Z.
			i := strings.Index(l[mid], `"time":"`) + len(`"time":"2006-01-02T15:04:05.00000`)
			d := byte('0' + (l[mid][i]-'0'+1)%10)
			l[mid] = l[mid][:i] + string(d) + l[mid][i+1:]
			return l
		}, mid + 1, midSeq, "modified"},
		{"one event removed", func(l []string) []string { return slices.Delete(l, mid, mid+1) }, mid + 1, midSeq + 1, "missing"},
		{"two events swapped", func(l []string) []string {
			l[mid], l[mid+1] = l[mid+1], l[mid]
			return l
		}, mid + 1, midSeq + 1, "missing"},
		{"checkpoint tag changed", func(l []string) []string {
			re := regexp.MustCompile(`"tag":"(.)`)
			l[firstCP] = re.ReplaceAllStringFunc(l[firstCP], func(s string) string {
				if strings.HasSuffix(s, "A") {
					return s[:len(s)-1] + "B"
				}
				return s[:len(s)-1] + "A"
			})
			return l
		}, firstCP + 1, seqOf(t, orig[firstCP]), "forged"},
		{"checkpoint forged over rewritten events", func(l []string) []string {
			l[mid] = strings.Replace(l[mid], `"action":"`, `"action":"X`, 1)
			resealFrom(t, l, mid)
			return l
		}, nextCP + 1, seqOf(t, orig[nextCP]), "forged"},
		{"checkpoint moved", func(l []string) []string {
			cp := l[firstCP]
			l = slices.Delete(l, firstCP, firstCP+1)
			return slices.Insert(l, firstCP-1, cp)
		}, firstCP, seqOf(t, orig[firstCP]), "covers seq"},
		{"last checkpoint and events cut", func(l []string) []string { return l[:mid] }, 0, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tampered := tt.tamper(slices.Clone(orig))
			if strings.Join(tampered, "") == strings.Join(orig, "") {
				t.Fatalf("the tampering changed nothing")
			}
			f := filepath.Join(t.TempDir(), "tampered.jsonl")
			if err := os.WriteFile(f, []byte(strings.Join(tampered, "")), 0o600); err != nil {
				t.Fatal(err)
			}
			got, out, err := auditVerify(t, "--config", cfgFile, "--file", f)
			if tt.wantLine == 0 {
				// Cutting the log after a checkpoint cannot be seen; what
				// is left verifies.
				if err != nil || got.events == 0 {
					t.Errorf("tresor audit verify --file of a log cut at line %d = %+v, %v; want it to verify", mid+1, got, err)
				}
				return
			}
			t.Logf("tresor audit verify --file: %v", err)
			where := fmt.Sprintf("at line %d, chain %s seq %d", tt.wantLine, chain, tt.wantSeq)
			if exitCodeOf(err) == 0 || !strings.Contains(err.Error(), "does NOT verify") || !strings.Contains(err.Error(), where) || !strings.Contains(err.Error(), tt.wantText) {
				t.Errorf("tresor audit verify --file (%s): stdout %q, err = %v; want a failure %s mentioning %q", tt.name, out, err, where, tt.wantText)
			}
		})
	}
}
