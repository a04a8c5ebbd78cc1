package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tresorkms/tresor/envelope"
	"github.com/tresorkms/tresor/internal/audit"
	"github.com/tresorkms/tresor/internal/config"
	"github.com/tresorkms/tresor/internal/server"
	"github.com/tresorkms/tresor/internal/store"
)

// pseudonymLabel is what the audit pseudonym key is derived from: the MAC,
// under version 1 of the configured HMAC key, of this label.
const pseudonymLabel = "tresor-audit-pseudonym-key-v1"

// auditPseudonymizer derives the audit log's pseudonym key from the
// keyring's HMAC key name (version 1, so rotating that key does not change
// the pseudonyms), creating the key when it is missing and create is set. Every replica of a
// store derives the same key; its bytes exist only in memory.
func auditPseudonymizer(ctx context.Context, ring *envelope.Keyring, name string, create bool) (*audit.Pseudonymizer, error) {
	// Looked up first: creating wraps a new keyset under the root key (an
	// HSM or KMS call) before the store says the name is taken.
	_, err := ring.GetKey(ctx, name)
	if errors.Is(err, envelope.ErrKeyNotFound) && create {
		_, err = ring.CreateKey(ctx, envelope.KeySpec{Name: name, Type: store.KeyTypeHMACSHA256,
			Labels: map[string]string{"sensitivity": "restricted", "purpose": "audit-pseudonyms", "owner": "tresor-audit"}})
		if errors.Is(err, envelope.ErrKeyExists) {
			err = nil // another replica created it first
		}
	}
	if err != nil {
		return nil, fmt.Errorf("audit pseudonym key %q: %w", name, err)
	}
	key, err := ring.MACVersion(ctx, name, 1, []byte(pseudonymLabel))
	if err != nil {
		return nil, fmt.Errorf("audit pseudonym key %q: %w", name, err)
	}
	defer clear(key)
	return audit.NewPseudonymizer(key)
}

// openAuditSinks opens the configured sinks; close releases them.
func openAuditSinks(ctx context.Context, c config.Audit, st store.Store) (sinks []audit.Sink, close func(), err error) {
	var files []*audit.FileSink
	close = func() {
		for _, f := range files {
			f.Close()
		}
	}
	if c.Store {
		sinks = append(sinks, audit.NewStoreSink(st))
	}
	if c.File != "" {
		f, err := audit.OpenFileSink(ctx, c.File)
		if err != nil {
			return nil, close, fmt.Errorf("audit.file: %w", err)
		}
		files = append(files, f)
		sinks = append(sinks, f)
	}
	return sinks, close, nil
}

// auditChain is the configured chain name, else a new one for this start
// of the server: the host name and a random suffix, so that replicas (on
// one host or many) and restarts never write one chain at once.
func auditChain(c config.Audit) (string, error) {
	if c.Chain != "" {
		return c.Chain, nil
	}
	h, err := os.Hostname()
	if err != nil || h == "" {
		h = "tresor"
	}
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("audit.chain: %w", err)
	}
	return h + "-" + hex.EncodeToString(b[:]), nil
}

// openAudit opens the audit log as configured: its sinks, its pseudonym
// key and its writer. closeAudit writes the final checkpoint.
func openAudit(ctx context.Context, c config.Audit, st store.Store, ring *envelope.Keyring, roots *envelope.RootKeys, reg prometheus.Registerer, logger *slog.Logger) (*audit.Log, server.AuditReader, func(), error) {
	pz, err := auditPseudonymizer(ctx, ring, c.PseudonymKey, true)
	if err != nil {
		return nil, nil, nil, err
	}
	chain, err := auditChain(c)
	if err != nil {
		return nil, nil, nil, err
	}
	sinks, closeSinks, err := openAuditSinks(ctx, c, st)
	if err != nil {
		closeSinks()
		return nil, nil, nil, err
	}
	failures := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tresor_audit_write_failures_total", Help: "Audit writes that failed (events lost only when audit.fail_open is set).",
	})
	lost := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tresor_audit_events_lost_total", Help: "Audit events not written: calls failed closed, or went unaudited with audit.fail_open.",
	})
	reg.MustRegister(failures, lost)
	log, err := audit.New(ctx, audit.Options{
		Chain: chain, RootKeys: roots, Pseudonymizer: pz,
		CheckpointEvery: c.CheckpointEvery, CheckpointInterval: c.CheckpointInterval,
		FailOpen: c.FailOpen,
		OnError: func(err error, events int) {
			// The error names the sink and the chain, never an event.
			logger.Error("audit write failed", "err", err, "events", events, "fail_open", c.FailOpen)
			failures.Inc()
			lost.Add(float64(events))
		},
	}, sinks...)
	if err != nil {
		closeSinks()
		return nil, nil, nil, fmt.Errorf("audit: %w", err)
	}
	closeAudit := func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), server.AuditWriteTimeout)
		defer cancel()
		_ = log.Close(cctx)
		closeSinks()
	}
	return log, server.NewAuditReader(st, roots, pz), closeAudit, nil
}

// loadSchemaDir stores every classification schema file in dir at
// start-up (a version already stored unchanged is fine).
func loadSchemaDir(ctx context.Context, reg *server.SchemaRegistry, dir string, logger *slog.Logger) error {
	if dir == "" {
		return nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("fields.schema_dir: %w", err)
	}
	for _, e := range entries {
		ext := filepath.Ext(e.Name())
		if e.IsDir() || (ext != ".yaml" && ext != ".yml" && ext != ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return fmt.Errorf("fields.schema_dir: %w", err)
		}
		s, err := reg.Load(ctx, b)
		if server.IsSchemaKeyError(err) {
			// Its keys are not created yet (a new deployment creates them
			// through the API once the server runs): the schema is stored
			// at the next start; tresor check names the missing keys.
			logger.WarnContext(ctx, "classification schema not loaded: its keys are missing or of the wrong type", "file", e.Name(), "err", err)
			continue
		}
		if err != nil {
			return fmt.Errorf("fields.schema_dir: %s: %w", e.Name(), err)
		}
		logger.InfoContext(ctx, "classification schema loaded", "schema", s.Name(), "version", s.Version(), "file", e.Name())
	}
	return nil
}
