package rotation

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/tresorkms/tresor/kms/pkcs11"
	"github.com/tresorkms/tresor/softhsm"
)

// hsm is the SoftHSM2 token the root-key tests and benchmarks share, made
// once by TestMain with two root keys: SoftHSM2 reads its configuration at
// C_Initialize, once per process, so every token exists before the first
// root key is opened.
var hsm struct {
	token        *softhsm.Token
	root1, root2 string // URIs of the keys labelled root-1 and root-2
}

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	if err := softhsm.Available(); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: rotation tests need SoftHSM2 (make test-deps installs it):", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "tresor-rotation-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()
	hsm.token, err = softhsm.NewToken(ctx, dir, "tresor-rotation")
	if err == nil {
		err = hsm.token.SetProcessEnv()
	}
	if err == nil {
		hsm.root1, hsm.root2 = hsm.token.URI("root-1"), hsm.token.URI("root-2")
		err = pkcs11.CreateRootKey(ctx, hsm.root1)
	}
	if err == nil {
		err = pkcs11.CreateRootKey(ctx, hsm.root2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: setting up the SoftHSM2 token:", err)
		return 1
	}
	return m.Run()
}
