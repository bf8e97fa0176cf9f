package snapshot_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"filippo.io/age"

	"github.com/stackport/stackport/snapshot"
	"github.com/stackport/stackport/storage"
)

const secretText = "APPSMITH_ENCRYPTION_SALT=never-in-plaintext"

func secretStreams() streams {
	data := bytes.Repeat([]byte(secretText+"\n"), 1000)
	return streams{names: []string{"env"}, data: map[string][]byte{"env": data}}
}

// storedBytes returns every stored object of the repository, concatenated.
func storedBytes(t *testing.T, repo *storage.Repo) []byte {
	t.Helper()
	var all []byte
	it := repo.Bucket().List(nil)
	for {
		obj, err := it.Next(context.Background())
		if err == io.EOF {
			return all
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := repo.Bucket().ReadAll(context.Background(), obj.Key)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
}

func TestEncryptedRoundTrip(t *testing.T) {
	x25519, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	pass, err := age.NewScryptRecipient("correct horse battery staple")
	if err != nil {
		t.Fatal(err)
	}
	pass.SetWorkFactor(10) // fast tests; the CLI uses age's default
	passID, _ := age.NewScryptIdentity("correct horse battery staple")
	other, _ := age.GenerateX25519Identity()
	wrongPass, _ := age.NewScryptIdentity("wrong")

	for name, c := range map[string]struct {
		to    age.Recipient
		id    age.Identity
		wrong age.Identity
	}{
		"x25519":     {x25519.Recipient(), x25519, other},
		"passphrase": {pass, passID, wrongPass},
	} {
		t.Run(name, func(t *testing.T) {
			repo := openRepo(t)
			src := secretStreams()
			// No compression, so plaintext would show verbatim.
			m, err := take(t, repo, src, snapshot.Options{Compression: snapshot.None, Recipients: []age.Recipient{c.to}})
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(storedBytes(t, repo), []byte("never-in-plaintext")) {
				t.Fatal("plaintext found in the stored objects")
			}
			if m.Component("files").Encryption != "age" || m.Key == nil {
				t.Fatalf("manifest does not record the encryption: %+v", m)
			}
			manifest, _ := m.Encode()
			if bytes.Contains(manifest, []byte("AGE-SECRET-KEY")) {
				t.Fatal("manifest holds key material")
			}

			loaded, err := snapshot.Load(context.Background(), repo, m.ID)
			if err != nil {
				t.Fatal(err)
			}
			_, err = snapshot.OpenComponent(context.Background(), repo, loaded, "files", snapshot.ReadOptions{})
			if !errors.Is(err, snapshot.ErrNoIdentity) {
				t.Fatalf("no identity: %v", err)
			}
			_, err = snapshot.OpenComponent(context.Background(), repo, loaded, "files", snapshot.ReadOptions{Identities: []age.Identity{c.wrong}})
			if err == nil || !strings.Contains(err.Error(), "wrong key or passphrase") {
				t.Fatalf("wrong identity: %v", err)
			}
			in, err := snapshot.OpenComponent(context.Background(), repo, loaded, "files", snapshot.ReadOptions{Identities: []age.Identity{c.id}})
			if err != nil {
				t.Fatal(err)
			}
			_, r, err := in.Next()
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(got, src.data["env"]) {
				t.Fatalf("decrypted %d bytes, %v", len(got), err)
			}
			r.Close()
			err = snapshot.Verify(context.Background(), repo, loaded, func(string) snapshot.Restorer { return nil }, snapshot.ReadOptions{Identities: []age.Identity{c.id}})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestEncryptedCorruption(t *testing.T) {
	id, _ := age.GenerateX25519Identity()
	repo := openRepo(t)
	m, err := take(t, repo, secretStreams(), snapshot.Options{Recipients: []age.Recipient{id.Recipient()}})
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"key.age", "files/env.zst"} {
		damage(t, repo, "snapshots/"+m.ID+"/"+key, func(b []byte) []byte { b[len(b)-20] ^= 1; return b })
		err := snapshot.Verify(context.Background(), repo, m, func(string) snapshot.Restorer { return nil }, snapshot.ReadOptions{Identities: []age.Identity{id}})
		if !errors.Is(err, snapshot.ErrCorrupt) || !strings.Contains(err.Error(), key) {
			t.Fatalf("damaged %s: %v", key, err)
		}
		damage(t, repo, "snapshots/"+m.ID+"/"+key, func(b []byte) []byte { b[len(b)-20] ^= 1; return b })
	}
}

func TestTwoRecipientsEachOpens(t *testing.T) {
	a, _ := age.GenerateX25519Identity()
	b, _ := age.GenerateX25519Identity()
	repo := openRepo(t)
	src := secretStreams()
	m, err := take(t, repo, src, snapshot.Options{Recipients: []age.Recipient{a.Recipient(), b.Recipient()}})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []age.Identity{a, b} {
		err := snapshot.Verify(context.Background(), repo, m, func(string) snapshot.Restorer { return nil }, snapshot.ReadOptions{Identities: []age.Identity{id}})
		if err != nil {
			t.Fatalf("recipient %v: %v", id, err)
		}
	}
}
