//go:build noawskms

package awskms

import (
	"context"
	"errors"
	"testing"

	"github.com/tresorkms/tresor/kms"
)

func TestNotBuilt(t *testing.T) {
	ctx := context.Background()
	const uri = "aws-kms://alias/tresor?region=eu-west-2"
	if _, err := Open(ctx, uri); !errors.Is(err, ErrNotBuilt) {
		t.Errorf("Open(%s) err = %v, want ErrNotBuilt", uri, err)
	}
	if _, err := CreateRootKey(ctx, uri); !errors.Is(err, ErrNotBuilt) {
		t.Errorf("CreateRootKey(%s) err = %v, want ErrNotBuilt", uri, err)
	}
	if _, err := Open(ctx, "aws-kms://"); !errors.Is(err, kms.ErrInvalidURI) {
		t.Errorf("Open(bad URI) err = %v, want kms.ErrInvalidURI", err)
	}
}
