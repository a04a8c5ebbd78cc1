package localkms_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tresorkms/tresor/localkms"
)

// These tests fail, not skip, when local-kms cannot be built or started.

func start(t *testing.T, opts localkms.Options) *localkms.Server {
	t.Helper()
	s, err := localkms.Start(context.Background(), opts)
	if err != nil {
		t.Fatalf("Start(%+v) err = %v, want nil", opts, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close() err = %v, want nil", err)
		}
	})
	return s
}

// call posts one KMS API call to the endpoint and decodes the answer.
func call(endpoint, op string, in any) (map[string]any, error) {
	body, _ := json.Marshal(in)
	req, err := http.NewRequest(http.MethodPost, endpoint+"/", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "TrentService."+op)
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: HTTP %d: %s", op, resp.StatusCode, data)
	}
	var out map[string]any
	return out, json.Unmarshal(data, &out)
}

func createKey(t *testing.T, endpoint string) string {
	t.Helper()
	out, err := call(endpoint, "CreateKey", map[string]any{})
	if err != nil {
		t.Fatalf("CreateKey on %s err = %v, want nil", endpoint, err)
	}
	md, _ := out["KeyMetadata"].(map[string]any)
	arn, _ := md["Arn"].(string)
	if arn == "" {
		t.Fatalf("CreateKey on %s = %v, want KeyMetadata.Arn", endpoint, out)
	}
	return arn
}

func TestStart(t *testing.T) {
	s := start(t, localkms.Options{Region: "eu-central-1", AccountID: "123456789012"})
	if !strings.HasPrefix(s.Endpoint(), "http://127.0.0.1:") || s.Endpoint() == "http://127.0.0.1:0" {
		t.Errorf("Endpoint() = %q, want http://127.0.0.1:PORT", s.Endpoint())
	}
	if !s.Running() {
		t.Error("Running() = false after Start, want true")
	}
	arn := createKey(t, s.Endpoint())
	if !strings.HasPrefix(arn, "arn:aws:kms:eu-central-1:123456789012:key/") {
		t.Errorf("CreateKey ARN = %q, want one in eu-central-1 and account 123456789012", arn)
	}
	if st, err := os.Stat(filepath.Join(s.Dir(), "data")); err != nil || !st.IsDir() {
		t.Errorf("Stat(Dir()/data) = %v, %v, want the data directory", st, err)
	}
	log, err := os.ReadFile(filepath.Join(s.Dir(), "local-kms.log"))
	if err != nil || !bytes.Contains(log, []byte("Local KMS started")) {
		t.Errorf("local-kms.log = %q, %v, want the start line", log, err)
	}
	env := strings.Join(s.ClientEnv(), "\n")
	for _, want := range []string{"AWS_ACCESS_KEY_ID=", "AWS_SECRET_ACCESS_KEY=", "AWS_EC2_METADATA_DISABLED=true", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true"} {
		if !strings.Contains(env, want) {
			t.Errorf("ClientEnv() = %q, want %s", env, want)
		}
	}
}

func TestStopRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := start(t, localkms.Options{Dir: dir})
	endpoint := s.Endpoint()
	arn := createKey(t, endpoint)

	if err := s.Stop(); err != nil {
		t.Fatalf("Stop() err = %v, want nil", err)
	}
	if s.Running() {
		t.Error("Running() = true after Stop, want false")
	}
	if _, err := call(endpoint, "ListKeys", map[string]any{}); err == nil {
		t.Fatalf("ListKeys after Stop err = nil, want a connection error")
	}
	if err := s.Stop(); err != nil {
		t.Errorf("second Stop() err = %v, want nil", err)
	}

	if err := s.Restart(ctx); err != nil {
		t.Fatalf("Restart() err = %v, want nil", err)
	}
	if s.Endpoint() != endpoint {
		t.Errorf("Endpoint() after Restart = %q, want the same %q", s.Endpoint(), endpoint)
	}
	out, err := call(s.Endpoint(), "DescribeKey", map[string]any{"KeyId": arn})
	if err != nil {
		t.Fatalf("DescribeKey(key made before the restart) err = %v, want nil", err)
	}
	if md, _ := out["KeyMetadata"].(map[string]any); md["Arn"] != arn {
		t.Errorf("DescribeKey = %v, want the key %s", out, arn)
	}

	// Restart of a running server stops it first.
	if err := s.Restart(ctx); err != nil {
		t.Fatalf("Restart() of a running server err = %v, want nil", err)
	}
	if _, err := call(s.Endpoint(), "DescribeKey", map[string]any{"KeyId": arn}); err != nil {
		t.Errorf("DescribeKey after the second Restart err = %v, want nil", err)
	}

	// A directory given in Options is kept by Close.
	if err := s.Close(); err != nil {
		t.Fatalf("Close() err = %v, want nil", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); err != nil {
		t.Errorf("Stat(Options.Dir/data) after Close err = %v, want it kept", err)
	}
	if err := s.Restart(ctx); err == nil {
		t.Error("Restart() after Close err = nil, want ErrNotRunning")
	}
}

func TestCloseRemovesTempDir(t *testing.T) {
	s, err := localkms.Start(context.Background(), localkms.Options{})
	if err != nil {
		t.Fatalf("Start err = %v, want nil", err)
	}
	dir := s.Dir()
	if err := s.Close(); err != nil {
		t.Fatalf("Close() err = %v, want nil", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("Stat(Dir()) after Close err = %v, want the temporary directory removed", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close() err = %v, want nil", err)
	}
}

func TestBuildCached(t *testing.T) {
	ctx := context.Background()
	tools, err := localkms.FindToolsDir()
	if err != nil {
		t.Fatalf("FindToolsDir() err = %v, want nil", err)
	}
	version, err := localkms.Version(tools)
	if err != nil || !strings.HasPrefix(version, "v") {
		t.Fatalf("Version(%s) = %q, %v, want the pinned version", tools, version, err)
	}
	bin, err := localkms.Build(ctx, tools)
	if err != nil {
		t.Fatalf("Build(%s) err = %v, want nil", tools, err)
	}
	if !strings.Contains(bin, "local-kms-"+version) {
		t.Errorf("Build() = %q, want a path naming version %s", bin, version)
	}
	began := time.Now()
	again, err := localkms.Build(ctx, "")
	if err != nil || again != bin {
		t.Errorf("Build() again = %q, %v, want %q, nil", again, err, bin)
	}
	if d := time.Since(began); d > time.Second {
		t.Errorf("cached Build() took %v, want it to reuse the binary", d)
	}
}

func TestStartFails(t *testing.T) {
	ctx := context.Background()
	if _, err := localkms.Start(ctx, localkms.Options{Binary: "/nonexistent/local-kms"}); err == nil || !strings.Contains(err.Error(), "/nonexistent/local-kms") {
		t.Errorf("Start(missing binary) err = %v, want an error naming it", err)
	}
	// A binary that exits at once: its output is in the error.
	script := filepath.Join(t.TempDir(), "fake-kms")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho boom-from-fake >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := localkms.Start(ctx, localkms.Options{Binary: script}); err == nil || !strings.Contains(err.Error(), "boom-from-fake") {
		t.Errorf("Start(binary that exits) err = %v, want its output in the error", err)
	}
	// A port in use.
	s := start(t, localkms.Options{})
	port := strings.TrimPrefix(s.Endpoint(), "http://127.0.0.1:")
	var p int
	fmt.Sscan(port, &p)
	if _, err := localkms.Start(ctx, localkms.Options{Port: p, StartTimeout: 10 * time.Second}); err == nil {
		t.Errorf("Start(port %d in use) err = nil, want an error", p)
	}
	if _, err := localkms.Version(t.TempDir()); err == nil {
		t.Error("Version(dir without go.mod) err = nil, want an error")
	}
}
