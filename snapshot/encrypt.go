package snapshot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"filippo.io/age"
)

// Encryption: when a snapshot is encrypted, a fresh X25519 data key is made
// for it; every object is encrypted to that key with age's streaming format
// (after compression), and the data key itself is stored, encrypted to the
// user's recipients or passphrase, as the object KeyName. So a passphrase
// costs one scrypt per snapshot, not one per object, and the manifest
// records that and how the snapshot is encrypted, never a key.

// KeyName is the object holding an encrypted snapshot's data key.
const KeyName = "key.age"

// EncryptionAge is the Component.Encryption value of encrypted components.
const EncryptionAge = "age"

// newDataKey makes a snapshot's data key and its stored, wrapped form.
func newDataKey(recipients []age.Recipient) (*age.X25519Identity, []byte, error) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		return nil, nil, fmt.Errorf("snapshot: encryption: %w", err)
	}
	var buf bytes.Buffer
	w, err := age.Encrypt(&buf, recipients...)
	if err != nil {
		return nil, nil, fmt.Errorf("snapshot: encryption: %w", err)
	}
	io.WriteString(w, id.String()+"\n")
	if err := w.Close(); err != nil {
		return nil, nil, fmt.Errorf("snapshot: encryption: %w", err)
	}
	return id, buf.Bytes(), nil
}

// ErrNoIdentity marks an encrypted snapshot read without a key or
// passphrase.
var ErrNoIdentity = errors.New("snapshot is encrypted: give --identity-file or --passphrase-file (or STACKPORT_PASSPHRASE)")

// unlock reads and decrypts the data key of an encrypted snapshot. A wrong
// key or passphrase fails here, before any object is read.
func unlock(ctx context.Context, store Store, m *Manifest, identities []age.Identity) (age.Identity, error) {
	if m.Key == nil {
		return nil, fmt.Errorf("snapshot %s: encrypted, but the manifest names no key object: %w", m.ID, ErrCorrupt)
	}
	if len(identities) == 0 {
		return nil, fmt.Errorf("snapshot %s: %w", m.ID, ErrNoIdentity)
	}
	r, err := openObject(ctx, store, m.ID, *m.Key, None, nil, nil)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	plain, err := age.Decrypt(r, identities...)
	if err != nil {
		if r.v.err != nil {
			return nil, r.v.err
		}
		var noMatch *age.NoIdentityMatchError
		if errors.As(err, &noMatch) || errors.Is(err, age.ErrIncorrectIdentity) {
			return nil, fmt.Errorf("snapshot %s: wrong key or passphrase: none of the given identities opens it", m.ID)
		}
		return nil, fmt.Errorf("snapshot %s: open key: %w", m.ID, err)
	}
	data, err := io.ReadAll(io.LimitReader(plain, 4096))
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: key object: %w", m.ID, err)
	}
	if _, err := io.Copy(io.Discard, r); err != nil { // the checksum check
		return nil, err
	}
	id, err := age.ParseX25519Identity(strings.TrimSpace(string(data)))
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: key object: %w: %w", m.ID, ErrCorrupt, err)
	}
	return id, nil
}
