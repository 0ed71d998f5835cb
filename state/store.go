package state

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/internal/fsutil"
)

// ErrLockTimeout is returned when another command holds the namespace lock
// for longer than the caller was willing to wait.
var ErrLockTimeout = errors.New("timed out waiting for the state lock")

// ErrCorrupt is wrapped by the error of a state file that does not decode:
// it is left untouched, and only `down --force` (Store.MoveAside) moves it.
var ErrCorrupt = errors.New("corrupt file")

// Store reads and writes the state of one namespace.
type Store struct {
	namespace string
	dir       string
}

// Open returns the store of namespace under root (see filenames.StateRoot).
// It touches nothing on disk.
func Open(root, namespace string) *Store {
	return &Store{namespace: namespace, dir: filenames.NamespaceState(root, namespace)}
}

// Dir is the namespace's state directory.
func (s *Store) Dir() string { return s.dir }

// Path is the state file.
func (s *Store) Path() string { return filepath.Join(s.dir, filenames.StateFile) }

// Read loads the state. A namespace without a state file yields New; a
// corrupt file or one of a newer format is an error and is left untouched,
// and so is a state directory that is not private (fsutil.CheckPrivate).
func (s *Store) Read() (*State, error) {
	if err := fsutil.CheckPrivate(s.dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read state: %w", err)
	}
	data, err := os.ReadFile(s.Path())
	if errors.Is(err, fs.ErrNotExist) {
		return New(s.namespace), nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	return Decode(data, s.Path())
}

// Decode parses a state file's bytes; name is used in errors.
func Decode(data []byte, name string) (*State, error) {
	var probe struct {
		FormatVersion *int `json:"format_version"`
	}
	if err := json.Unmarshal(data, &probe); err != nil {
		return nil, fmt.Errorf("read state %s: %w (%v); it was left untouched (`stack down --force` stops what runs and keeps it as a backup)", name, ErrCorrupt, err)
	}
	if probe.FormatVersion == nil {
		return nil, fmt.Errorf("read state %s: %w (no format_version); it was left untouched (`stack down --force` stops what runs and keeps it as a backup)", name, ErrCorrupt)
	}
	if *probe.FormatVersion > FormatVersion {
		return nil, fmt.Errorf("read state %s: format version %d is newer than this stack understands (%d); upgrade stack", name, *probe.FormatVersion, FormatVersion)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	st := New("")
	if err := dec.Decode(st); err != nil {
		return nil, fmt.Errorf("read state %s: %w (%v); it was left untouched (`stack down --force` stops what runs and keeps it as a backup)", name, ErrCorrupt, err)
	}
	if st.Lineage == "" {
		return nil, fmt.Errorf("read state %s: %w (no lineage); it was left untouched (`stack down --force` stops what runs and keeps it as a backup)", name, ErrCorrupt)
	}
	if st.Networks == nil {
		st.Networks = map[string]*Network{}
	}
	if st.Volumes == nil {
		st.Volumes = map[string]*Volume{}
	}
	if st.VMs == nil {
		st.VMs = map[string]*VM{}
	}
	return st, nil
}

// Write stores st atomically and advances its serial (and sets its lineage
// on the first write). The caller must hold the lock.
func (s *Store) Write(st *State) error {
	if st.Lineage == "" {
		st.Lineage = newLineage()
	}
	st.Serial++
	st.FormatVersion = FormatVersion
	st.Namespace = s.namespace
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	data = append(data, '\n')
	if err := fsutil.MkdirPrivate(s.dir); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	if err := WriteFileAtomic(s.Path(), data); err != nil {
		st.Serial--
		return fmt.Errorf("write state: %w", err)
	}
	return nil
}

// Remove deletes the namespace's state file (after `down` removed
// everything). The lock file and directory stay while the lock is held.
func (s *Store) Remove() error {
	if err := os.Remove(s.Path()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove state: %w", err)
	}
	return nil
}

// MoveAside renames a (corrupt) state file to a backup beside it,
// state.json.corrupt-<time>, and returns the backup's path: what `down
// --force` does so that the namespace can be taken down and the file's
// contents are kept for the user.
func (s *Store) MoveAside(now time.Time) (string, error) {
	backup := s.Path() + ".corrupt-" + now.UTC().Format("20060102T150405Z")
	if err := os.Rename(s.Path(), backup); err != nil {
		return "", fmt.Errorf("move state aside: %w", err)
	}
	return backup, nil
}

// WriteFileAtomic writes data to path so that a reader sees the old or the
// new content, never a torn file (see fsutil.WriteFileAtomic).
func WriteFileAtomic(path string, data []byte) error { return fsutil.WriteFileAtomic(path, data) }

// Lock is a held namespace lock.
type Lock = fsutil.Lock

// Lock takes the namespace's exclusive lock, waiting up to timeout. When the
// lock is busy, waiting is called once (to tell the user) before waiting.
// The lock belongs to the open file: it is released on Unlock or when the
// process dies, so a killed command never leaves a stale lock.
func (s *Store) Lock(ctx context.Context, timeout time.Duration, waiting func()) (*Lock, error) {
	if err := fsutil.MkdirPrivate(s.dir); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	lctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	l, err := fsutil.LockFile(lctx, filepath.Join(s.dir, filenames.LockFile), waiting)
	switch {
	case err == nil:
		return l, nil
	case ctx.Err() != nil:
		return nil, fmt.Errorf("lock state: %w", ctx.Err())
	case errors.Is(err, context.DeadlineExceeded):
		return nil, fmt.Errorf("lock state of namespace %q after %s: %w", s.namespace, timeout, ErrLockTimeout)
	}
	return nil, fmt.Errorf("lock state: %w", err)
}

// List returns the namespaces that have a state file under root, sorted.
func List(root string) ([]string, error) {
	entries, err := os.ReadDir(root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	var out []string
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		if _, err := os.Stat(filepath.Join(root, e.Name(), filenames.StateFile)); err == nil {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out, nil
}
