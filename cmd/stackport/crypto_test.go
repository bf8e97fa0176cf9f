package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"

	"github.com/stackport/stackport/internal/treetest"
)

// grepTree reports whether any file under dir contains s.
func grepTree(t *testing.T, dir, s string) bool {
	t.Helper()
	found := false
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			b, _ := os.ReadFile(path)
			found = found || bytes.Contains(b, []byte(s))
		}
		return nil
	})
	return found
}

func TestEncryptedSnapshot(t *testing.T) {
	const secret = "fixture-secret" // in the fixture's configuration/docker.env
	src := treetest.Fixture(t, t.TempDir())
	key, _ := age.GenerateX25519Identity()
	keyFile := filepath.Join(t.TempDir(), "key.txt")
	os.WriteFile(keyFile, []byte(key.String()+"\n"), 0o600)
	wrong, _ := age.GenerateX25519Identity()
	wrongFile := filepath.Join(t.TempDir(), "wrong.txt")
	os.WriteFile(wrongFile, []byte(wrong.String()+"\n"), 0o600)
	passFile := filepath.Join(t.TempDir(), "pass")
	os.WriteFile(passFile, []byte("a long passphrase\n"), 0o600)

	t.Run("unencrypted warns", func(t *testing.T) {
		repoDir := t.TempDir()
		e := &testEnv{t: t, repo: "file://" + repoDir}
		if _, err := e.snapshot(context.Background(), snapshotOptions{Volume: src, Compression: "none"}); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(e.stderr.String(), "APPSMITH_ENCRYPTION") {
			t.Errorf("no warning about unencrypted secrets: %s", e.stderr.String())
		}
		if !grepTree(t, repoDir, secret) {
			t.Fatal("the plaintext check cannot fail: the secret is not found in an unencrypted repository")
		}
	})

	for name, enc := range map[string]cryptoOptions{
		"recipient":  {EncryptTo: []string{key.Recipient().String()}},
		"passphrase": {PassphraseFile: passFile},
	} {
		t.Run(name, func(t *testing.T) {
			repoDir := t.TempDir()
			e := &testEnv{t: t, repo: "file://" + repoDir}
			id, err := e.snapshot(context.Background(), snapshotOptions{Volume: src, Compression: "none", Crypto: enc})
			if err != nil {
				t.Fatal(err)
			}
			if grepTree(t, repoDir, secret) || grepTree(t, repoDir, "a line of compressible log text") {
				t.Fatal("plaintext in the encrypted repository")
			}
			dec := cryptoOptions{IdentityFiles: []string{keyFile}}
			bad := cryptoOptions{IdentityFiles: []string{wrongFile}}
			if name == "passphrase" {
				dec = cryptoOptions{PassphraseFile: passFile}
				badPass := filepath.Join(t.TempDir(), "bad")
				os.WriteFile(badPass, []byte("not it"), 0o600)
				bad = cryptoOptions{PassphraseFile: badPass}
			}

			dst := filepath.Join(t.TempDir(), "restored")
			for _, c := range []cryptoOptions{{}, bad} {
				err := e.restore(id, dst, restoreOptions{Crypto: c})
				if err == nil || exitCode(err) != 1 {
					t.Fatalf("restore without the right key: exit %d, %v", exitCode(err), err)
				}
				if _, serr := os.Stat(dst); !os.IsNotExist(serr) {
					t.Fatalf("a restore without the key touched the target (%v)", err)
				}
			}
			if err := runVerify(context.Background(), e.global(), verifyOptions{Crypto: dec}, id); err != nil {
				t.Fatal(err)
			}
			if err := e.restore(id, dst, restoreOptions{Crypto: dec}); err != nil {
				t.Fatal(err)
			}
			treetest.Compare(t, src, dst, treetest.Options{Owners: os.Geteuid() == 0, Root: true})
		})
	}

	t.Run("fails closed", func(t *testing.T) {
		repoDir := t.TempDir()
		e := &testEnv{t: t, repo: "file://" + repoDir}
		for _, enc := range []cryptoOptions{
			{EncryptTo: []string{"age1notakey"}},
			{EncryptTo: []string{"/no/such/file"}},
			{EncryptTo: []string{key.Recipient().String()}, PassphraseFile: passFile},
			{PassphraseFile: "/no/such/file"},
		} {
			if _, err := e.snapshot(context.Background(), snapshotOptions{Volume: src, Crypto: enc}); err == nil {
				t.Errorf("%+v: snapshot succeeded", enc)
			}
		}
		if l := e.list(); len(l) != 0 {
			t.Fatalf("a failed encrypted snapshot left %v", l)
		}
	})
}
