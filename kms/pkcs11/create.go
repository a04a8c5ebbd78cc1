//go:build cgo

package pkcs11

import (
	"context"
	"crypto/rand"
	"fmt"

	p11 "github.com/miekg/pkcs11"
)

// CreateRootKey generates a new AES-256 root key in the token the URI names
// (see [ParseURI]), labelled with the URI's object and with its id as CKA_ID
// (16 random bytes if the URI has none). The key is a token object that is
// private, sensitive and not extractable, allowed to encrypt and decrypt
// only. CreateRootKey fails with [ErrKeyExists] if the token already holds a
// secret key with that label (or that id). It is a setup step: two
// concurrent calls for the same label may both succeed.
func CreateRootKey(ctx context.Context, uri string, opts ...Option) error {
	o := newOptions(opts)
	u, err := ParseURI(uri)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	pin, _, err := readPIN(u.PINSource)
	if err != nil {
		return err
	}
	mod, err := acquireModule(u.ModulePath)
	if err != nil {
		return err
	}
	defer mod.release()
	mod.calls.RLock()
	defer mod.calls.RUnlock()
	c := mod.p11
	tok, sh, err := mod.acquireToken(c, u, pin, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
	if err != nil {
		return err
	}
	defer tok.release()
	defer c.CloseSession(sh)

	secretKey := p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY)
	existing, err := findObjects(c, sh, []*p11.Attribute{secretKey, p11.NewAttribute(p11.CKA_LABEL, u.Object)}, 1)
	if err != nil {
		return fmt.Errorf("pkcs11: token %q: looking for key %q: %w", tok.label, u.Object, classify(err))
	}
	if len(existing) > 0 {
		return fmt.Errorf("%w: token %q already has a secret key labelled %q", ErrKeyExists, tok.label, u.Object)
	}
	id := u.ID
	if len(id) == 0 {
		id = make([]byte, 16)
		if _, err := rand.Read(id); err != nil {
			return fmt.Errorf("pkcs11: %w", err)
		}
	} else {
		existing, err := findObjects(c, sh, []*p11.Attribute{secretKey, p11.NewAttribute(p11.CKA_ID, id)}, 1)
		if err != nil {
			return fmt.Errorf("pkcs11: token %q: looking for key id %s: %w", tok.label, escapeAll(id), classify(err))
		}
		if len(existing) > 0 {
			return fmt.Errorf("%w: token %q already has a secret key with id %s", ErrKeyExists, tok.label, escapeAll(id))
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	_, err = c.GenerateKey(sh, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_GEN, nil)}, []*p11.Attribute{
		secretKey,
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES),
		p11.NewAttribute(p11.CKA_VALUE_LEN, 32),
		p11.NewAttribute(p11.CKA_LABEL, u.Object),
		p11.NewAttribute(p11.CKA_ID, id),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_PRIVATE, true),
		p11.NewAttribute(p11.CKA_SENSITIVE, true),
		p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
		p11.NewAttribute(p11.CKA_ENCRYPT, true),
		p11.NewAttribute(p11.CKA_DECRYPT, true),
		p11.NewAttribute(p11.CKA_WRAP, false),
		p11.NewAttribute(p11.CKA_UNWRAP, false),
		p11.NewAttribute(p11.CKA_SIGN, false),
		p11.NewAttribute(p11.CKA_VERIFY, false),
		p11.NewAttribute(p11.CKA_DERIVE, false),
	})
	if err != nil {
		return fmt.Errorf("pkcs11: token %q: generating key %q: %w", tok.label, u.Object, classify(err))
	}
	o.logger.InfoContext(ctx, "pkcs11 root key created", "id", keyID(tok.label, u.Object, id), "module", mod.path)
	return nil
}
