// Package templates keeps boot templates on disk: for each VM shape (its
// key, made by the QEMU driver from everything the snapshot depends on),
// the guest's memory at its park point and QEMU's device state, from
// which later VMs of that shape are restored instead of booted.
//
// A template is a directory <root>/<key> holding mem (the guest's RAM, a
// sparse file that restored VMs map copy-on-write, so it is never written
// after it is made), state (QEMU's migration stream without RAM) and
// meta.json, written last. Templates are made in a temporary directory and
// renamed into place whole, so a reader never sees half of one; one is
// valid only when its meta matches its files (a truncated memory file or a
// damaged state is detected and the template discarded). A per-key lock
// keeps two processes from making the same template. Use refreshes a
// template's modification time, which Prune evicts by (least recently used
// first) when the templates outgrow their limit.
package templates

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/internal/fsutil"
)

// Format is the version of the layout below; a template of another format
// is not used.
const Format = 1

// File names inside a template directory.
const (
	MemFile   = "mem"
	StateFile = "state"
	MetaFile  = "meta.json"
)

// DefaultLimit bounds the disk the templates of a cache use (allocated
// blocks, not file sizes: memory files are sparse).
const DefaultLimit = 4 << 30

// Shape describes what a template was made for, for `stack cache ls`. The
// key decides; this is for people.
type Shape struct {
	Machine   string   `json:"machine"`
	Accel     string   `json:"accel"`
	CPUs      int      `json:"cpus"`
	MemoryMB  int      `json:"memory_mb"`
	Kernel    string   `json:"kernel"`
	Initramfs string   `json:"initramfs,omitempty"`
	Devices   []string `json:"devices,omitempty"` // "nic", "disk raw 64MiB", ...
	QEMU      string   `json:"qemu"`              // version
}

// Meta is a template's meta.json.
type Meta struct {
	Format      int       `json:"format"`
	Key         string    `json:"key"`
	Shape       Shape     `json:"shape"`
	Created     time.Time `json:"created"`
	MemBytes    int64     `json:"mem_bytes"`
	StateBytes  int64     `json:"state_bytes"`
	StateSHA256 string    `json:"state_sha256"`
	// SaveTook is how long the VM was paused to make the template.
	SaveTook time.Duration `json:"save_took"`
}

// Template is a valid template on disk.
type Template struct {
	Dir  string
	Meta Meta
	// Disk is the space its files take (allocated blocks).
	Disk int64
	// Used is when it was last made or restored from.
	Used time.Time
}

// Mem and State are the template's files.
func (t *Template) Mem() string   { return filepath.Join(t.Dir, MemFile) }
func (t *Template) State() string { return filepath.Join(t.Dir, StateFile) }

// Store is a directory of templates.
type Store struct {
	Root string
	// Limit bounds the templates' disk use (0: DefaultLimit).
	Limit int64
}

// Open returns the store at root (made on first use).
func Open(root string) *Store { return &Store{Root: root} }

func (s *Store) dir(key string) string { return filepath.Join(s.Root, key) }

// Get returns the valid template of key. A template that is there but not
// valid is removed, and the error says why (fs.ErrNotExist when there is
// none at all).
func (s *Store) Get(key string) (*Template, error) {
	dir := s.dir(key)
	t, err := load(dir)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			os.RemoveAll(dir)
		}
		return nil, err
	}
	if t.Meta.Key != key {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("template %s: its meta names key %s", key, t.Meta.Key)
	}
	return t, nil
}

// load reads and checks the template in dir.
func load(dir string) (*Template, error) {
	b, err := os.ReadFile(filepath.Join(dir, MetaFile))
	if err != nil {
		return nil, err
	}
	var m Meta
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("template %s: read meta: %w", filepath.Base(dir), err)
	}
	if m.Format != Format {
		return nil, fmt.Errorf("template %s: format %d, this stack reads %d", filepath.Base(dir), m.Format, Format)
	}
	t := &Template{Dir: dir, Meta: m}
	mem, err := os.Stat(t.Mem())
	if err != nil {
		return nil, fmt.Errorf("template %s: memory file: %v", filepath.Base(dir), err) // not ErrNotExist: there is a template, damaged
	}
	if mem.Size() != m.MemBytes {
		return nil, fmt.Errorf("template %s: memory file has %d bytes, its meta says %d (truncated?)", filepath.Base(dir), mem.Size(), m.MemBytes)
	}
	state, err := os.ReadFile(t.State())
	if err != nil {
		return nil, fmt.Errorf("template %s: state file: %v", filepath.Base(dir), err)
	}
	if sum := sha256.Sum256(state); int64(len(state)) != m.StateBytes || hex.EncodeToString(sum[:]) != m.StateSHA256 {
		return nil, fmt.Errorf("template %s: state file does not match its meta (damaged?)", filepath.Base(dir))
	}
	meta, _ := os.Stat(filepath.Join(dir, MetaFile))
	t.Used = meta.ModTime()
	t.Disk = allocated(mem) + allocated(meta) + int64(len(state))
	return t, nil
}

// allocated is the disk a file takes.
func allocated(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}

// Use marks t as just used, for the least-recently-used eviction.
func (s *Store) Use(t *Template) {
	now := time.Now()
	os.Chtimes(filepath.Join(t.Dir, MetaFile), now, now)
}

// Remove deletes the template of key. Restored VMs that map its memory
// keep it until they end (an unlinked file lives while mapped).
func (s *Store) Remove(key string) error {
	return os.RemoveAll(s.dir(key))
}

// List returns the valid templates, most recently used first. Invalid
// ones (and leftovers of makings that did not finish) are removed, unless
// a making is still under way.
func (s *Store) List() ([]*Template, error) {
	ents, err := os.ReadDir(s.Root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list templates: %w", err)
	}
	var out []*Template
	for _, e := range ents {
		name := e.Name()
		switch {
		case !e.IsDir():
			continue
		case strings.HasPrefix(name, tmpPrefix):
			if !s.making(strings.TrimPrefix(name, tmpPrefix)) {
				os.RemoveAll(filepath.Join(s.Root, name))
			}
			continue
		}
		t, err := load(filepath.Join(s.Root, name))
		if err != nil {
			os.RemoveAll(filepath.Join(s.Root, name))
			continue
		}
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Used.After(out[j].Used) })
	return out, nil
}

// Prune removes the least recently used templates until the rest fit in
// the store's limit, keeping keep (the one just made), and returns what
// it removed.
func (s *Store) Prune(keep string) ([]*Template, error) {
	limit := s.Limit
	if limit <= 0 {
		limit = DefaultLimit
	}
	list, err := s.List()
	if err != nil {
		return nil, err
	}
	var total int64
	for _, t := range list {
		total += t.Disk
	}
	var removed []*Template
	for i := len(list) - 1; i >= 0 && total > limit; i-- {
		t := list[i]
		if t.Meta.Key == keep {
			continue
		}
		if err := os.RemoveAll(t.Dir); err != nil {
			return removed, fmt.Errorf("prune template %s: %w", t.Meta.Key, err)
		}
		total -= t.Disk
		removed = append(removed, t)
	}
	return removed, nil
}

// tmpPrefix names a template being made: <root>/.making-<key>.
const tmpPrefix = ".making-"

// Making is a template being made. Its files are written in a temporary
// directory that Commit renames into place; Abort (or a crash) leaves
// nothing that is ever taken for a template.
type Making struct {
	s    *Store
	key  string
	dir  string
	lock *fsutil.Lock
}

// Begin starts making the template of key. It returns ok false, and no
// error, when another process is making it now: the caller boots without
// making one rather than wait.
func (s *Store) Begin(ctx context.Context, key string) (m *Making, ok bool, err error) {
	if err := os.MkdirAll(s.Root, filenames.DirMode); err != nil {
		return nil, false, fmt.Errorf("make template: %w", err)
	}
	// One try: a lock held elsewhere is not waited for.
	lock, err := fsutil.TryLockFile(s.lockPath(key))
	if err != nil {
		return nil, false, fmt.Errorf("make template: lock: %w", err)
	}
	if lock == nil {
		return nil, false, nil
	}
	dir := filepath.Join(s.Root, tmpPrefix+key)
	os.RemoveAll(dir) // a making that did not finish
	if err := os.Mkdir(dir, filenames.DirMode); err != nil {
		lock.Unlock()
		return nil, false, fmt.Errorf("make template: %w", err)
	}
	return &Making{s: s, key: key, dir: dir, lock: lock}, true, nil
}

func (s *Store) lockPath(key string) string { return filepath.Join(s.Root, "."+key+".lock") }

// making reports whether a process holds key's making lock.
func (s *Store) making(key string) bool {
	lock, err := fsutil.TryLockFile(s.lockPath(key))
	if err != nil || lock == nil {
		return true
	}
	lock.Unlock()
	return false
}

// Dir is where the making writes its files (MemFile, StateFile).
func (m *Making) Dir() string { return m.dir }

// Commit checks the files, writes the meta and puts the template in place.
func (m *Making) Commit(meta Meta) (*Template, error) {
	defer m.lock.Unlock()
	state, err := os.ReadFile(filepath.Join(m.dir, StateFile))
	if err != nil {
		m.abort()
		return nil, fmt.Errorf("commit template: %w", err)
	}
	mem, err := os.Stat(filepath.Join(m.dir, MemFile))
	if err != nil {
		m.abort()
		return nil, fmt.Errorf("commit template: %w", err)
	}
	sum := sha256.Sum256(state)
	meta.Format, meta.Key = Format, m.key
	meta.MemBytes, meta.StateBytes, meta.StateSHA256 = mem.Size(), int64(len(state)), hex.EncodeToString(sum[:])
	b, err := json.MarshalIndent(meta, "", "  ")
	if err != nil {
		m.abort()
		return nil, err
	}
	for _, f := range []string{MemFile, StateFile} {
		if err := fsutil.SyncFile(filepath.Join(m.dir, f)); err != nil {
			m.abort()
			return nil, fmt.Errorf("commit template: %w", err)
		}
	}
	if err := fsutil.WriteFileAtomic(filepath.Join(m.dir, MetaFile), b); err != nil {
		m.abort()
		return nil, fmt.Errorf("commit template: %w", err)
	}
	final := m.s.dir(m.key)
	os.RemoveAll(final) // an invalid one Get would have removed anyway
	if err := os.Rename(m.dir, final); err != nil {
		m.abort()
		return nil, fmt.Errorf("commit template: %w", err)
	}
	return load(final)
}

// Abort drops the making.
func (m *Making) Abort() {
	defer m.lock.Unlock()
	m.abort()
}

func (m *Making) abort() { os.RemoveAll(m.dir) }
