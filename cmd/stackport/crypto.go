package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strings"

	"filippo.io/age"
	"filippo.io/age/agessh"
	"github.com/spf13/pflag"
)

// cryptoOptions are the encryption flags of snapshot (recipients or a
// passphrase) and of restore, verify and export (identities or the
// passphrase).
type cryptoOptions struct {
	EncryptTo      []string
	IdentityFiles  []string
	PassphraseFile string
}

const passphraseEnv = "STACKPORT_PASSPHRASE"

func (o *cryptoOptions) addEncryptFlags(f *pflag.FlagSet) {
	f.StringArrayVar(&o.EncryptTo, "encrypt-to", nil, "encrypt to this age public key (age1…), SSH public key (ssh-ed25519/ssh-rsa …) or file of such keys, one per line (repeatable)")
	f.StringVar(&o.PassphraseFile, "passphrase-file", "", "encrypt with the passphrase in this file (or set "+passphraseEnv+")")
}

func (o *cryptoOptions) addDecryptFlags(f *pflag.FlagSet) {
	f.StringArrayVar(&o.IdentityFiles, "identity-file", nil, "age identity file (AGE-SECRET-KEY-…) or SSH private key that opens an encrypted snapshot (repeatable)")
	f.StringVar(&o.PassphraseFile, "passphrase-file", "", "open an encrypted snapshot with the passphrase in this file (or set "+passphraseEnv+")")
}

// passphrase returns the passphrase from --passphrase-file or the
// environment, or "".
func (o *cryptoOptions) passphrase() (string, error) {
	if o.PassphraseFile == "" {
		return os.Getenv(passphraseEnv), nil
	}
	b, err := os.ReadFile(o.PassphraseFile)
	if err != nil {
		return "", fmt.Errorf("passphrase: %w", err)
	}
	p := strings.TrimRight(string(b), "\r\n")
	if p == "" {
		return "", fmt.Errorf("passphrase: %s is empty", o.PassphraseFile)
	}
	return p, nil
}

// recipients returns whom a new snapshot is encrypted to; none means no
// encryption. Any key that cannot be parsed is an error: a snapshot asked to
// be encrypted is never written in plaintext.
func (o *cryptoOptions) recipients() ([]age.Recipient, error) {
	pass, err := o.passphrase()
	if err != nil {
		return nil, err
	}
	var rs []age.Recipient
	for _, arg := range o.EncryptTo {
		lines := []string{arg}
		if b, err := os.ReadFile(arg); err == nil {
			lines = strings.Split(string(b), "\n")
		} else if !strings.HasPrefix(arg, "age1") && !strings.HasPrefix(arg, "ssh-") {
			return nil, usageErrorf("--encrypt-to %q: neither a public key nor a readable file: %v", arg, err)
		}
		for _, l := range lines {
			l = strings.TrimSpace(l)
			if l == "" || strings.HasPrefix(l, "#") {
				continue
			}
			r, err := parseRecipient(l)
			if err != nil {
				return nil, usageErrorf("--encrypt-to %q: %v", arg, err)
			}
			rs = append(rs, r)
		}
	}
	if pass != "" {
		if len(rs) > 0 {
			return nil, usageErrorf("encrypt either to public keys (--encrypt-to) or with a passphrase, not both")
		}
		r, err := age.NewScryptRecipient(pass)
		if err != nil {
			return nil, err
		}
		rs = append(rs, r)
	}
	if len(o.EncryptTo) > 0 && len(rs) == 0 {
		return nil, usageErrorf("--encrypt-to names no keys")
	}
	return rs, nil
}

func parseRecipient(s string) (age.Recipient, error) {
	if strings.HasPrefix(s, "ssh-") {
		return agessh.ParseRecipient(s)
	}
	return age.ParseX25519Recipient(s)
}

// identities returns what may open an encrypted snapshot.
func (o *cryptoOptions) identities() ([]age.Identity, error) {
	var ids []age.Identity
	for _, path := range o.IdentityFiles {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("identity: %w", err)
		}
		if bytes.Contains(b, []byte("-----BEGIN")) {
			id, err := agessh.ParseIdentity(b)
			if err != nil {
				return nil, fmt.Errorf("identity %s: %w", path, err)
			}
			ids = append(ids, id)
			continue
		}
		parsed, err := age.ParseIdentities(bytes.NewReader(b))
		if err != nil {
			return nil, fmt.Errorf("identity %s: %w", path, err)
		}
		ids = append(ids, parsed...)
	}
	pass, err := o.passphrase()
	if err != nil {
		return nil, err
	}
	if pass != "" {
		id, err := age.NewScryptIdentity(pass)
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// holdsAppsmithSecrets reports whether a volume's Appsmith configuration
// holds its encryption password or salt.
func holdsAppsmithSecrets(volume string) bool {
	f, err := os.Open(volume + "/configuration/docker.env")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if ok && v != "" && strings.HasPrefix(k, "APPSMITH_ENCRYPTION_") {
			return true
		}
	}
	return false
}
