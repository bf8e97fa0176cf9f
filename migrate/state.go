package migrate

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"
)

// State is what a migration records of its progress, so that a run that
// was interrupted and is started again with the same sources and targets
// resumes instead of starting over (see Journal).
type State struct {
	// Key names the migration: the same sources and targets give the
	// same key (see Key).
	Key string `json:"key"`
	// About describes the sources and targets, without secrets.
	About    string    `json:"about,omitempty"`
	Started  time.Time `json:"started"` // the first run
	Updated  time.Time `json:"updated"`
	Runs     int       `json:"runs"`
	Complete bool      `json:"complete"` // every component moved and matched its source
	// Components are keyed by kind.
	Components map[string]*ComponentState `json:"components"`
}

// ComponentState is the progress of one component.
type ComponentState struct {
	// Moved: the component's last move finished.
	Moved bool `json:"moved,omitempty"`
	// Writing: the migration wrote (or began to write) this target, so
	// what the target holds of the component is the migration's own and
	// may be replaced when it resumes.
	Writing bool `json:"writing,omitempty"`
	// Differs: the last check found the target different from its
	// source; the next run moves the component again.
	Differs bool `json:"differs,omitempty"`
	// Units are the parts moved completely, with their number of items:
	// MongoDB collections ("db.coll": documents), Redis databases ("db0":
	// keys).
	Units map[string]int64 `json:"units,omitempty"`
	// Begun are the parts written to, finished or not (Redis databases).
	Begun []string `json:"begun,omitempty"`
	// Refused: the last move failed because the target held data of its
	// own in the way (snapshot.ErrTargetNotEmpty).
	Refused bool `json:"refused,omitempty"`
}

// Key returns the key of a migration described by parts (its sources and
// targets): a hash, so that the parts, which may hold secrets, are not
// kept.
func Key(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintf(h, "%d:%s\x00", len(p), p)
	}
	return hex.EncodeToString(h.Sum(nil))[:20]
}

// A StateStore keeps the State of one migration.
type StateStore interface {
	// Load returns the stored state, or nil without one.
	Load(ctx context.Context) (*State, error)
	// Save replaces the stored state, atomically.
	Save(ctx context.Context, s *State) error
	// String names the place, for messages.
	String() string
}

// FileStore keeps the state in a JSON file.
type FileStore string

// Load implements StateStore.
func (f FileStore) Load(ctx context.Context) (*State, error) {
	data, err := os.ReadFile(string(f))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("migrate: state: %w", err)
	}
	return decodeState(data, f.String())
}

// Save implements StateStore: it writes a temporary file beside the state
// and renames it.
func (f FileStore) Save(ctx context.Context, s *State) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	dir, base := filepath.Split(string(f))
	if dir == "" {
		dir = "." // not os.TempDir: the rename must stay on one file system
	}
	tmp, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("migrate: state: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(append(data, '\n'))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), string(f))
	}
	if err != nil {
		return fmt.Errorf("migrate: state: %w", err)
	}
	return nil
}

func (f FileStore) String() string { return string(f) }

// BucketStore keeps the state as one object of a bucket (a repository's).
type BucketStore struct {
	Bucket *blob.Bucket
	Key    string // the object, such as "migrations/<key>.json"
	Name   string // the bucket, for messages
}

// StateObject is the object of a repository that keeps the state of the
// migration key.
func StateObject(key string) string { return "migrations/" + key + ".json" }

// Load implements StateStore.
func (b BucketStore) Load(ctx context.Context) (*State, error) {
	data, err := b.Bucket.ReadAll(ctx, b.Key)
	if gcerrors.Code(err) == gcerrors.NotFound {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("migrate: state %s: %s", b, gcerrors.Code(err))
	}
	return decodeState(data, b.String())
}

// Save implements StateStore.
func (b BucketStore) Save(ctx context.Context, s *State) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := b.Bucket.WriteAll(ctx, b.Key, append(data, '\n'), &blob.WriterOptions{ContentType: "application/json"}); err != nil {
		return fmt.Errorf("migrate: state %s: %s", b, gcerrors.Code(err))
	}
	return nil
}

func (b BucketStore) String() string { return strings.TrimSuffix(b.Name, "/") + " " + b.Key }

func decodeState(data []byte, where string) (*State, error) {
	var s State
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("migrate: state %s: %w", where, err)
	}
	if s.Components == nil {
		s.Components = map[string]*ComponentState{}
	}
	return &s, nil
}

// Journal records the progress of a migration in a StateStore while Run
// moves it, and tells Run what an earlier run of the same migration
// finished. It is safe for concurrent use.
type Journal struct {
	store   StateStore
	log     *slog.Logger
	mu      sync.Mutex
	state   *State
	resumed bool // the state is an earlier run's
}

// OpenJournal loads the state of the migration key from store. A state of
// another migration (another key) is an error: the place belongs to it.
func OpenJournal(ctx context.Context, store StateStore, key, about string, log *slog.Logger) (*Journal, error) {
	if log == nil {
		log = slog.Default()
	}
	s, err := store.Load(ctx)
	if err != nil {
		return nil, err
	}
	j := &Journal{store: store, log: log, state: s, resumed: s != nil}
	switch {
	case s == nil:
		j.state = &State{Key: key, About: about, Components: map[string]*ComponentState{}}
	case s.Key != key:
		return nil, fmt.Errorf("migrate: %s holds the state of another migration (%s): remove it, or keep this run's state elsewhere", store, s.About)
	}
	return j, nil
}

// Resumed reports whether an earlier run of the migration left a state.
func (j *Journal) Resumed() bool { return j.resumed }

// State returns a copy of the state.
func (j *Journal) State() State {
	j.mu.Lock()
	defer j.mu.Unlock()
	s := *j.state
	s.Components = map[string]*ComponentState{}
	for k, c := range j.state.Components {
		cc := *c
		cc.Units = maps.Clone(c.Units)
		cc.Begun = slices.Clone(c.Begun)
		s.Components[k] = &cc
	}
	return s
}

// Where names the place of the state.
func (j *Journal) Where() string { return j.store.String() }

// component returns a copy of kind's state.
func (j *Journal) component(kind string) ComponentState {
	j.mu.Lock()
	defer j.mu.Unlock()
	c := j.state.Components[kind]
	if c == nil {
		return ComponentState{}
	}
	cc := *c
	cc.Units = maps.Clone(c.Units)
	cc.Begun = slices.Clone(c.Begun)
	return cc
}

// update changes the state with fn and saves it.
func (j *Journal) update(ctx context.Context, fn func(s *State)) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	fn(j.state)
	j.state.Updated = time.Now().UTC()
	return j.store.Save(context.WithoutCancel(ctx), j.state)
}

// updateComponent changes kind's state with fn and saves it.
func (j *Journal) updateComponent(ctx context.Context, kind string, fn func(c *ComponentState)) error {
	return j.update(ctx, func(s *State) {
		c := s.Components[kind]
		if c == nil {
			c = &ComponentState{}
			s.Components[kind] = c
		}
		fn(c)
	})
}

// begin records the start of a run.
func (j *Journal) begin(ctx context.Context) error {
	return j.update(ctx, func(s *State) {
		if s.Started.IsZero() {
			s.Started = time.Now().UTC()
		}
		s.Runs++
		s.Complete = false
	})
}

// unit records that a unit of kind moved completely. A failure to save is
// logged: the move goes on.
func (j *Journal) unit(ctx context.Context, kind, unit string, items int64) {
	err := j.updateComponent(ctx, kind, func(c *ComponentState) {
		if c.Units == nil {
			c.Units = map[string]int64{}
		}
		c.Units[unit] = items
	})
	if err != nil {
		j.log.Warn("migrate: cannot record a finished part: if this run is interrupted, the next one moves it again", "component", kind, "part", unit, "error", err)
	}
}
