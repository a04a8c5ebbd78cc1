//go:build !noawskms

package provider

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/tresorkms/tresor/kms/awskms"
	"github.com/tresorkms/tresor/localkms"
)

// TestOpenAWSKMS opens a root key in a real local-kms through Open, by ARN
// and by alias. It fails, not skips, when local-kms cannot be built or
// started.
func TestOpenAWSKMS(t *testing.T) {
	ctx := context.Background()
	srv, err := localkms.Start(ctx, localkms.Options{})
	if err != nil {
		t.Fatalf("localkms.Start err = %v, want nil", err)
	}
	t.Cleanup(func() { srv.Close() })
	for _, kv := range srv.ClientEnv() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	alias := "aws-kms://alias/provider-test?region=" + srv.Region() + "&endpoint=" + srv.Endpoint()
	uri, err := awskms.CreateRootKey(ctx, alias)
	if err != nil {
		t.Fatalf("awskms.CreateRootKey(%s) err = %v, want nil", alias, err)
	}
	var ids []string
	for _, u := range []string{uri, alias} {
		k, err := Open(ctx, u, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatalf("Open(%s) err = %v, want nil", u, err)
		}
		defer k.Close()
		if _, ok := k.(*awskms.RootKey); !ok || !strings.HasPrefix(k.ID(), "aws-kms://arn:aws:kms:"+srv.Region()+":") {
			t.Errorf("Open(%s) = %T with ID %q, want an *awskms.RootKey with a key ARN ID", u, k, k.ID())
		}
		ids = append(ids, k.ID())
		w, err := k.Wrap(ctx, []byte("keyset"), []byte("aad"))
		if err != nil {
			t.Fatalf("Wrap(pt, aad) err = %v, want nil", err)
		}
		if got, err := k.Unwrap(ctx, w, []byte("aad")); err != nil || string(got) != "keyset" {
			t.Errorf("Unwrap(Wrap(pt, aad), aad) = %q, %v, want \"keyset\", nil", got, err)
		}
	}
	if ids[0] != ids[1] {
		t.Errorf("ID() by ARN = %q, by alias = %q, want the same", ids[0], ids[1])
	}
}
