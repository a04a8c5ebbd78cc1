//go:build !noawskms

package awskms

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/tresorkms/tresor/localkms"
)

// server is the local-kms every test of the package shares but the fault
// tests, which start their own. TestMain fails the package, not skips it,
// if local-kms cannot be built or started.
var server *localkms.Server

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var err error
	server, err = localkms.Start(context.Background(), localkms.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: kms/awskms tests need local-kms:", err)
		return 1
	}
	defer server.Close()
	return m.Run()
}

// clientEnv points the AWS SDK at static test credentials and away from
// the developer's AWS configuration, for the test.
func clientEnv(t *testing.T, s *localkms.Server) {
	t.Helper()
	for _, kv := range s.ClientEnv() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_DEFAULT_REGION", "")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_MAX_ATTEMPTS", "")
}

// testKeys are two root keys on server: A, with the alias tresor-test-a,
// and B.
type testKeys struct {
	aURI, aAliasURI, aARN string
	bURI                  string
}

var keys struct {
	once sync.Once
	k    testKeys
	err  error
}

// sharedKeys creates the test keys on server once per process.
func sharedKeys(t *testing.T) testKeys {
	t.Helper()
	clientEnv(t, server)
	keys.once.Do(func() {
		ctx := context.Background()
		alias := "aws-kms://alias/tresor-test-a?region=" + server.Region() + "&endpoint=" + server.Endpoint()
		keys.k.aAliasURI = alias
		if keys.k.aURI, keys.err = CreateRootKey(ctx, alias); keys.err != nil {
			return
		}
		u, err := ParseURI(keys.k.aURI)
		if err != nil {
			keys.err = err
			return
		}
		keys.k.aARN = u.Key
		keys.k.bURI, keys.err = CreateRootKey(ctx, "aws-kms://?region="+server.Region()+"&endpoint="+server.Endpoint())
	})
	if keys.err != nil {
		t.Fatalf("creating the test keys on local-kms: %v", keys.err)
	}
	return keys.k
}

func openKey(t *testing.T, uri string, opts ...Option) *RootKey {
	t.Helper()
	k, err := Open(context.Background(), uri, opts...)
	if err != nil {
		t.Fatalf("Open(%s) err = %v, want nil", uri, err)
	}
	t.Cleanup(func() { _ = k.Close() })
	return k
}
