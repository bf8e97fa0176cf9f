package snapshot

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path"
	"regexp"
	"strings"
	"time"
)

// FormatVersion is the manifest version this build writes and the newest it
// reads.
const FormatVersion = 1

// ManifestName is the name of the object that makes a snapshot visible. It is
// written after every other object of the snapshot.
const ManifestName = "manifest.json"

// Manifest describes one snapshot. It is stored as JSON in manifest.json.
type Manifest struct {
	Version   int               `json:"version"`
	ID        string            `json:"id"`
	Created   time.Time         `json:"created"`
	Host      string            `json:"host"`
	Stackport string            `json:"stackport_version"`
	Tags      map[string]string `json:"tags,omitempty"`
	// Components in the order they were added.
	Components []Component `json:"components"`
	// Key is the object holding the data key of an encrypted snapshot
	// (itself encrypted to the user's recipients or passphrase).
	Key *Object `json:"key,omitempty"`
}

// Component is one part of a snapshot: the volume, a database.
type Component struct {
	Kind        string `json:"kind"`
	Compression string `json:"compression"`
	Encryption  string `json:"encryption"`
	// Objects in the order the component wrote them; restore reads them
	// in this order.
	Objects []Object `json:"objects"`
	Stats   Stats    `json:"stats,omitempty"`
}

// Object is one stored stream of a component.
type Object struct {
	// Key is the object's name inside the snapshot, for example
	// "volume/volume.tar.zst".
	Key string `json:"key"`
	// Name is the stream's name as the component created it ("volume.tar").
	Name string `json:"name"`
	// Size and SHA256 describe the stored (compressed) bytes.
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	// RawSize is the length of the stream before compression.
	RawSize int64 `json:"raw_size"`
}

// Component returns the component of the given kind, or nil.
func (m *Manifest) Component(kind string) *Component {
	for i := range m.Components {
		if m.Components[i].Kind == kind {
			return &m.Components[i]
		}
	}
	return nil
}

// StoredSize is the sum of the stored sizes of all objects.
func (m *Manifest) StoredSize() (n int64) {
	for _, c := range m.Components {
		for _, o := range c.Objects {
			n += o.Size
		}
	}
	return n
}

// RawSize is the sum of the uncompressed sizes of all objects.
func (m *Manifest) RawSize() (n int64) {
	for _, c := range m.Components {
		for _, o := range c.Objects {
			n += o.RawSize
		}
	}
	return n
}

// Encode returns the manifest as indented JSON.
func (m *Manifest) Encode() ([]byte, error) {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("snapshot: encode manifest: %w", err)
	}
	return append(b, '\n'), nil
}

// DecodeManifest parses and validates a stored manifest. Unknown fields are
// ignored (a newer stackport may add some within the same version); a newer
// version, missing fields and hostile values are errors wrapping ErrCorrupt.
func DecodeManifest(data []byte) (*Manifest, error) {
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("snapshot: manifest: %w: %w", ErrCorrupt, err)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

var (
	idPattern   = regexp.MustCompile(`^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}$`)
	kindPattern = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,31}$`)
	hexSHA256   = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// ValidID reports whether id has the form of a snapshot ID.
func ValidID(id string) bool { return idPattern.MatchString(id) }

// NewID returns a snapshot ID for time t: the UTC time to the second and six
// random hex digits, so IDs sort by time.
func NewID(t time.Time) string {
	var b [3]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return t.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
}

// Validate checks a manifest read from storage before anything trusts it.
func (m *Manifest) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("snapshot: manifest %s: %s: %w", m.ID, fmt.Sprintf(format, a...), ErrCorrupt)
	}
	switch {
	case m.Version < 1:
		return bad("missing or invalid version %d", m.Version)
	case m.Version > FormatVersion:
		return bad("version %d is newer than this stackport reads (%d); upgrade stackport", m.Version, FormatVersion)
	case !ValidID(m.ID):
		return bad("invalid id %q", m.ID)
	case len(m.Components) == 0:
		return bad("no components")
	}
	seenKind := map[string]bool{}
	seenKey := map[string]bool{}
	if k := m.Key; k != nil {
		if k.Key != KeyName || !hexSHA256.MatchString(k.SHA256) || k.Size < 0 || k.RawSize < 0 {
			return bad("invalid key object %+v", *k)
		}
		seenKey[k.Key] = true
	}
	for _, c := range m.Components {
		if !kindPattern.MatchString(c.Kind) || seenKind[c.Kind] {
			return bad("invalid or duplicate component kind %q", c.Kind)
		}
		seenKind[c.Kind] = true
		if _, err := ParseCompression(c.Compression); err != nil {
			return bad("component %s: %v", c.Kind, err)
		}
		switch c.Encryption {
		case "none":
		case EncryptionAge:
			if m.Key == nil {
				return bad("component %s is encrypted but there is no key object", c.Kind)
			}
		default:
			return bad("component %s: unsupported encryption %q", c.Kind, c.Encryption)
		}
		for _, o := range c.Objects {
			if !validKey(o.Key) || seenKey[o.Key] {
				return bad("component %s: invalid or duplicate object key %q", c.Kind, o.Key)
			}
			seenKey[o.Key] = true
			if !validKey(o.Name) {
				return bad("object %s: invalid stream name %q", o.Key, o.Name)
			}
			if o.Size < 0 || o.RawSize < 0 {
				return bad("object %s: negative size", o.Key)
			}
			if !hexSHA256.MatchString(o.SHA256) {
				return bad("object %s: invalid sha256 %q", o.Key, o.SHA256)
			}
		}
	}
	return nil
}

// validKey reports whether k is a clean, relative, slash-separated path
// without "." or ".." elements that does not collide with the manifest.
func validKey(k string) bool {
	if k == "" || len(k) > 1024 || k == ManifestName || strings.HasPrefix(k, "/") || strings.ContainsAny(k, "\\\x00") {
		return false
	}
	if path.Clean(k) != k {
		return false
	}
	for _, e := range strings.Split(k, "/") {
		if e == "." || e == ".." {
			return false
		}
	}
	return true
}
