package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"syscall"
	"time"

	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/internal/fsutil"
	"github.com/stackvm/stack/state"
	"github.com/stackvm/stack/supervisor/api"
	"golang.org/x/sync/errgroup"
)

// Snapshots of a namespace (see docs/snapshots.md). A snapshot is a
// directory in the namespace's state directory (filenames.Snapshot): the
// supervisor's save (each VMM's, and the namespace's files as they were)
// and a manifest that records the state as planned and a checksum of
// every file. It is written under a hidden name and renamed into place
// once whole and on disk, so a snapshot that is listed or restored is
// never half-written.

// manifestFormat changes with the layout of a snapshot.
const manifestFormat = 1

// manifest is a snapshot's filenames.SnapshotManifest.
type manifest struct {
	Format    int    `json:"format"`
	Name      string `json:"name"`
	Namespace string `json:"namespace"` // saved from
	// NamespaceDir is the state directory the saved paths are in; a
	// restore maps them to its own namespace's.
	NamespaceDir string    `json:"namespace_dir"`
	Created      time.Time `json:"created"`
	// Key is the caller's name for what was saved (stacktest: the stack
	// files, variables and stack's version); a restore can ask for it.
	Key string `json:"key,omitempty"`
	// StackFiles are the stack files the namespace was planned from, when
	// the save was given them; State holds what they planned (every
	// attribute resolved, variables included) and its serial.
	StackFiles []stackFile  `json:"stack_files,omitempty"`
	State      *state.State `json:"state"`
	Saved      *api.Saved   `json:"saved"`
	Files      []fileSum    `json:"files"` // every other file, relative to the snapshot
	Bytes      int64        `json:"bytes"` // on disk (holes take none)
	Took       api.Duration `json:"took"`
}

// stackFile is a stack file as it was at a save.
type stackFile struct {
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
}

// fileSum is a file of a snapshot as it was written.
type fileSum struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	CRC32C uint32 `json:"crc32c"`
	disk   int64  // its blocks on disk, when written
}

// allocated is the disk space a file takes.
func allocated(path string) int64 {
	var st syscall.Stat_t
	if syscall.Stat(path, &st) != nil {
		return 0
	}
	return st.Blocks * 512
}

// Snapshot describes a snapshot for `snapshot ls`.
type Snapshot struct {
	Name      string    `json:"name"`
	Namespace string    `json:"namespace"`
	Created   time.Time `json:"created"`
	Bytes     int64     `json:"bytes"` // on disk
	VMs       []string  `json:"vms"`
	Networks  []string  `json:"networks"`
	Volumes   []string  `json:"volumes"`
	Key       string    `json:"key,omitempty"`
	Dir       string    `json:"dir"`
	// Paused is how long the VMs were paused for the save.
	Paused time.Duration `json:"paused"`
}

// snapshotName is what a snapshot may be called: it names a directory.
var snapshotName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$`)

// checkSnapshotName refuses names that are not a snapshot's.
func checkSnapshotName(name string) error {
	if !snapshotName.MatchString(name) {
		return fmt.Errorf("invalid snapshot name %q: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit", name)
	}
	return nil
}

// SnapshotOptions tune SaveSnapshot.
type SnapshotOptions struct {
	Key         string // recorded in the manifest (Snapshot.Key)
	LockTimeout time.Duration
	OnLockWait  func()
	// Dir, when set, is where the snapshot is written instead of the
	// namespace's snapshots (stacktest keeps its fixtures in the cache).
	Dir string
	// StackFiles, when set, are the stack files the namespace was planned
	// from: the manifest records their hashes.
	StackFiles []string
}

// SaveSnapshot saves the running namespace as snapshot name: its VMs
// paused together and saved, its disks and volumes as they were at that
// moment; the VMs then run on. A name in use is refused.
func (e *Engine) SaveSnapshot(ctx context.Context, name string, opts SnapshotOptions) (*Snapshot, error) {
	t0 := time.Now()
	if err := checkSnapshotName(name); err != nil {
		return nil, err
	}
	dir := opts.Dir
	if dir == "" {
		dir = filenames.Snapshot(e.opts.StateRoot, e.opts.Namespace, name)
	}
	lock, err := e.lock(ctx, opts.LockTimeout, opts.OnLockWait)
	if err != nil {
		return nil, err
	}
	defer lock.Unlock()
	st, err := e.store.Read()
	if err != nil {
		return nil, err
	}
	if len(st.VMs) == 0 {
		return nil, fmt.Errorf("namespace %q has no VMs to save", e.opts.Namespace)
	}
	if _, err := os.Stat(dir); err == nil {
		return nil, fmt.Errorf("snapshot %q exists: remove it first (stack snapshot rm %s)", name, name)
	}
	staging, release, err := beginStaging(ctx, dir)
	if err != nil {
		return nil, err
	}
	defer release()
	sup, err := e.dial(ctx)
	if err != nil {
		if IsNoSupervisor(err) {
			return nil, fmt.Errorf("namespace %q is not running: nothing to save", e.opts.Namespace)
		}
		return nil, err
	}
	saved, err := sup.SaveSnapshot(ctx, staging)
	if err != nil {
		return nil, err
	}
	m := &manifest{Format: manifestFormat, Name: name, Namespace: e.opts.Namespace, Created: time.Now().UTC(),
		NamespaceDir: filenames.NamespaceState(e.opts.StateRoot, e.opts.Namespace), Key: opts.Key, State: st, Saved: saved}
	for _, f := range opts.StackFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("save snapshot %q: %w", name, err)
		}
		sum := sha256.Sum256(b)
		m.StackFiles = append(m.StackFiles, stackFile{Path: f, SHA256: hex.EncodeToString(sum[:])})
	}
	if m.Files, err = sumFiles(staging); err != nil {
		return nil, fmt.Errorf("save snapshot %q: %w", name, err)
	}
	for _, f := range m.Files {
		m.Bytes += f.disk
	}
	m.Took = api.Duration(time.Since(t0))
	if err := writeManifest(staging, m); err != nil {
		return nil, fmt.Errorf("save snapshot %q: %w", name, err)
	}
	if err := fsutil.SyncTree(staging); err != nil {
		return nil, fmt.Errorf("save snapshot %q: %w", name, err)
	}
	if err := os.Rename(staging, dir); err != nil {
		return nil, fmt.Errorf("save snapshot %q: %w", name, err)
	}
	fsutil.SyncDir(filepath.Dir(dir))
	return describe(dir, m), nil
}

// beginStaging makes the hidden directory a snapshot is written in, held
// by a lock for as long as it is written: a staging directory whose lock
// nobody holds was left by a killed save, and is removed. release removes
// the staging directory (unless it was renamed) and the lock.
func beginStaging(ctx context.Context, dir string) (string, func(), error) {
	staging := filenames.SnapshotStaging(dir)
	if err := os.MkdirAll(filepath.Dir(dir), filenames.DirMode); err != nil {
		return "", nil, err
	}
	lock, err := fsutil.TryLockFile(staging + ".lock")
	if err != nil {
		return "", nil, err
	}
	if lock == nil {
		return "", nil, fmt.Errorf("snapshot %q is being saved by another command", filepath.Base(dir))
	}
	os.RemoveAll(staging)
	if err := os.Mkdir(staging, filenames.DirMode); err != nil {
		lock.Unlock()
		return "", nil, err
	}
	return staging, func() {
		os.RemoveAll(staging)
		os.Remove(staging + ".lock")
		lock.Unlock()
	}, nil
}

// sumFiles lists every regular file under dir with its size and CRC-32C.
func sumFiles(dir string) ([]fileSum, error) {
	var out []fileSum
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		size, sum, err := crcFile(path)
		if err != nil {
			return err
		}
		out = append(out, fileSum{Path: rel, Size: size, CRC32C: sum, disk: allocated(path)})
		return nil
	})
	return out, err
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crcFile is a file's size and the CRC-32C of its data regions, each with
// its offset (a memory file or disk image is mostly holes, which read as
// zeros: they are not read). Hardware-assisted, a snapshot's hundreds of
// MiB of data take tens of milliseconds.
func crcFile(path string) (int64, uint32, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, err
	}
	h := crc32.New(castagnoli)
	err = fsutil.DataRegions(f, func(off, n int64) error {
		fmt.Fprintf(h, "%d+%d:", off, n)
		_, err := io.Copy(h, io.NewSectionReader(f, off, n))
		return err
	})
	return fi.Size(), h.Sum32(), err
}

func writeManifest(dir string, m *manifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(filepath.Join(dir, filenames.SnapshotManifest), append(b, '\n'))
}

// readManifest reads a snapshot's manifest; a directory without one is no
// snapshot.
func readManifest(dir string) (*manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, filenames.SnapshotManifest))
	if err != nil {
		return nil, err
	}
	var m manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("read snapshot %s: %w", filepath.Base(dir), err)
	}
	if m.Format != manifestFormat {
		return nil, fmt.Errorf("read snapshot %s: format %d, this stack reads %d", filepath.Base(dir), m.Format, manifestFormat)
	}
	if m.State == nil || m.Saved == nil {
		return nil, fmt.Errorf("read snapshot %s: the manifest is incomplete", filepath.Base(dir))
	}
	return &m, nil
}

// verify checks that every file of the snapshot is there as it was
// written, a few files at once.
func (m *manifest) verify(dir string) error {
	var g errgroup.Group
	g.SetLimit(4)
	for _, f := range m.Files {
		g.Go(func() error {
			size, sum, err := crcFile(filepath.Join(dir, f.Path))
			switch {
			case err != nil:
				return fmt.Errorf("snapshot %q is damaged: %w", m.Name, err)
			case size != f.Size:
				return fmt.Errorf("snapshot %q is damaged: %s has %d bytes, %d were saved", m.Name, f.Path, size, f.Size)
			case sum != f.CRC32C:
				return fmt.Errorf("snapshot %q is damaged: %s is not what was saved (checksum)", m.Name, f.Path)
			}
			return nil
		})
	}
	return g.Wait()
}

func describe(dir string, m *manifest) *Snapshot {
	s := &Snapshot{Name: m.Name, Namespace: m.Namespace, Created: m.Created, Bytes: m.Bytes, Key: m.Key, Dir: dir,
		Paused: time.Duration(m.Saved.Paused)}
	for _, v := range m.Saved.VMs {
		s.VMs = append(s.VMs, v.Spec.Name)
	}
	for _, n := range m.Saved.Networks {
		s.Networks = append(s.Networks, n.Name)
	}
	for name := range m.State.Volumes {
		s.Volumes = append(s.Volumes, name)
	}
	sort.Strings(s.Volumes)
	return s
}

// Snapshots lists the namespace's snapshots, oldest first. Snapshots being
// written are not listed.
func (e *Engine) Snapshots() ([]*Snapshot, error) {
	root := filepath.Dir(filenames.Snapshot(e.opts.StateRoot, e.opts.Namespace, "x"))
	ents, err := os.ReadDir(root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []*Snapshot
	for _, ent := range ents {
		if !ent.IsDir() || !snapshotName.MatchString(ent.Name()) {
			continue // staging directories start with a dot
		}
		dir := filepath.Join(root, ent.Name())
		m, err := readManifest(dir)
		if err != nil {
			e.log.Warn("not a snapshot", "dir", dir, "err", err)
			continue
		}
		out = append(out, describe(dir, m))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

// RemoveSnapshot removes snapshot name. VMs restored from it do not need
// it: a restore copies what it takes.
func (e *Engine) RemoveSnapshot(name string) error {
	if err := checkSnapshotName(name); err != nil {
		return err
	}
	dir := filenames.Snapshot(e.opts.StateRoot, e.opts.Namespace, name)
	if _, err := readManifest(dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("no snapshot %q in namespace %q", name, e.opts.Namespace)
		}
		return err
	}
	// Renamed away first, so that a removal cut short leaves no snapshot
	// that looks whole.
	trash := filenames.SnapshotStaging(dir) + ".rm"
	if err := os.Rename(dir, trash); err != nil {
		return fmt.Errorf("remove snapshot %q: %w", name, err)
	}
	return os.RemoveAll(trash)
}
