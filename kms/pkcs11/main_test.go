//go:build cgo

package pkcs11

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/tresorkms/tresor/softhsm"
)

// Tokens made once for the package by TestMain: SoftHSM2 reads its
// configuration at C_Initialize, so every token exists before the first Open.
var (
	// mainToken holds rootURI's key; the conformance suite and benchmarks use it.
	mainToken *softhsm.Token
	// pinToken holds a key too but stays closed between tests, so that a
	// wrong PIN reaches C_Login.
	pinToken *softhsm.Token
	// outageToken holds the keys "outage-1" and "outage-2"; the recovery
	// tests move its directory, outageDir, away and back.
	outageToken *softhsm.Token
	outageDir   string
	rootURI     string
	testDir     string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if err := softhsm.Available(); err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: kms/pkcs11 tests need SoftHSM2: %v\n", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "tresor-pkcs11-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	testDir = dir
	ctx := context.Background()
	if mainToken, err = softhsm.NewToken(ctx, dir, "tresor"); err == nil {
		pinToken, err = softhsm.NewToken(ctx, dir, "pin-test")
	}
	if err == nil {
		outageToken, outageDir, err = newTokenDir(ctx, dir, "outage")
	}
	if err == nil {
		err = mainToken.SetProcessEnv()
	}
	if err == nil {
		rootURI = mainToken.URI("root-1")
		err = CreateRootKey(ctx, rootURI)
	}
	if err == nil {
		err = CreateRootKey(ctx, pinToken.URI("root-1"))
	}
	for _, object := range []string{"outage-1", "outage-2"} {
		if err == nil {
			err = CreateRootKey(ctx, outageToken.URI(object))
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: setting up SoftHSM2 tokens:", err)
		return 1
	}
	return m.Run()
}

// newTokenDir makes a token and returns the directory SoftHSM2 keeps it in.
func newTokenDir(ctx context.Context, dir, label string) (*softhsm.Token, string, error) {
	tokens := filepath.Join(dir, "tokens")
	before, err := os.ReadDir(tokens)
	if err != nil {
		return nil, "", err
	}
	tok, err := softhsm.NewToken(ctx, dir, label)
	if err != nil {
		return nil, "", err
	}
	after, err := os.ReadDir(tokens)
	if err != nil {
		return nil, "", err
	}
	seen := map[string]bool{}
	for _, e := range before {
		seen[e.Name()] = true
	}
	for _, e := range after {
		if !seen[e.Name()] {
			return tok, filepath.Join(tokens, e.Name()), nil
		}
	}
	return nil, "", fmt.Errorf("no new directory in %s for token %q", tokens, label)
}
