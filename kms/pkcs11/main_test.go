//go:build cgo

package pkcs11

import (
	"context"
	"fmt"
	"os"
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
	rootURI  string
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
	ctx := context.Background()
	if mainToken, err = softhsm.NewToken(ctx, dir, "tresor"); err == nil {
		pinToken, err = softhsm.NewToken(ctx, dir, "pin-test")
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
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: setting up SoftHSM2 tokens:", err)
		return 1
	}
	return m.Run()
}
