package templates

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stackvm/stack/internal/fsutil"
)

// makeOne makes a template of key with a memory file of memBytes (a
// sparse file with one written page) and a small state.
func makeOne(t *testing.T, s *Store, key string, memBytes int64) *Template {
	t.Helper()
	m, ok, err := s.Begin(context.Background(), key)
	if err != nil || !ok {
		t.Fatalf("begin %s: %v %v", key, ok, err)
	}
	src, err := os.CreateTemp(t.TempDir(), "mem")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	src.Truncate(memBytes)
	src.WriteAt([]byte("guest page"), memBytes/2)
	if err := fsutil.CopySparse(filepath.Join(m.Dir(), MemFile), src); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(m.Dir(), StateFile), []byte("device state of "+key), 0o600); err != nil {
		t.Fatal(err)
	}
	tpl, err := m.Commit(Meta{Shape: Shape{CPUs: 1, MemoryMB: int(memBytes >> 20)}, Created: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	return tpl
}

func TestMakeAndGet(t *testing.T) {
	s := Open(t.TempDir())
	if _, err := s.Get("k1"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("get before making: %v", err)
	}
	made := makeOne(t, s, "k1", 64<<20)
	got, err := s.Get("k1")
	if err != nil {
		t.Fatal(err)
	}
	if got.Meta.MemBytes != 64<<20 || got.Meta.Key != "k1" || got.Dir != made.Dir {
		t.Fatalf("got %+v", got.Meta)
	}
	// The copy kept the hole: a 64 MiB memory file with one page written
	// takes a few blocks.
	if got.Disk > 1<<20 {
		t.Errorf("template takes %d bytes on disk: the memory file's holes were filled", got.Disk)
	}
	b, _ := os.ReadFile(got.Mem())
	if !strings.Contains(string(b[32<<20:32<<20+16]), "guest page") {
		t.Error("the written page is not in the copy")
	}
	for _, f := range []string{MemFile, StateFile, MetaFile} {
		if fi, err := os.Stat(filepath.Join(got.Dir, f)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v, want mode 0600", f, fi.Mode(), err)
		}
	}
}

// Damaged templates are detected, not used, and removed.
func TestDamagedTemplates(t *testing.T) {
	for name, damage := range map[string]func(tpl *Template){
		"truncated memory": func(tpl *Template) { os.Truncate(tpl.Mem(), tpl.Meta.MemBytes/2) },
		"missing memory":   func(tpl *Template) { os.Remove(tpl.Mem()) },
		"damaged state":    func(tpl *Template) { os.WriteFile(tpl.State(), []byte("device state of kX"), 0o600) },
		"missing state":    func(tpl *Template) { os.Remove(tpl.State()) },
		"bad meta":         func(tpl *Template) { os.WriteFile(filepath.Join(tpl.Dir, MetaFile), []byte("{"), 0o600) },
		"other format": func(tpl *Template) {
			b, _ := os.ReadFile(filepath.Join(tpl.Dir, MetaFile))
			os.WriteFile(filepath.Join(tpl.Dir, MetaFile), []byte(strings.Replace(string(b), `"format": 1`, `"format": 99`, 1)), 0o600)
		},
	} {
		t.Run(name, func(t *testing.T) {
			s := Open(t.TempDir())
			tpl := makeOne(t, s, "k1", 8<<20)
			damage(tpl)
			if _, err := s.Get("k1"); err == nil || errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("damaged template: %v, want an error saying what is wrong", err)
			}
			if _, err := os.Stat(tpl.Dir); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("damaged template left in place: %v", err)
			}
		})
	}
}

// A making that is under way is not a template; one that was abandoned (a
// killed process) is cleared, and the key can be made again.
func TestMakingIsNeverATemplate(t *testing.T) {
	s := Open(t.TempDir())
	m, ok, err := s.Begin(context.Background(), "k1")
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	os.WriteFile(filepath.Join(m.Dir(), MemFile), []byte("x"), 0o600)
	if _, err := s.Get("k1"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a template under way was taken: %v", err)
	}
	// Another process cannot make it at the same time.
	if _, ok, err := s.Begin(context.Background(), "k1"); ok || err != nil {
		t.Fatalf("second making of one key: ok %v, %v", ok, err)
	}
	if list, _ := s.List(); len(list) != 0 {
		t.Fatalf("list shows a making: %v", list)
	}
	if _, err := os.Stat(m.Dir()); err != nil {
		t.Fatalf("list removed a making still under way: %v", err)
	}
	// The making process dies: its lock goes, its directory stays until
	// the next List or Begin clears it.
	m.lock.Unlock()
	if list, _ := s.List(); len(list) != 0 {
		t.Fatalf("list: %v", list)
	}
	if _, err := os.Stat(m.Dir()); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("an abandoned making was not cleared: %v", err)
	}
	makeOne(t, s, "k1", 8<<20)
}

// Prune evicts the least recently used templates beyond the limit, and
// never the one it is told to keep.
func TestPruneLRU(t *testing.T) {
	s := Open(t.TempDir())
	var keys []string
	for i, k := range []string{"a", "b", "c"} {
		tpl := makeOne(t, s, k, 8<<20)
		past := time.Now().Add(time.Duration(i-10) * time.Minute)
		os.Chtimes(filepath.Join(tpl.Dir, MetaFile), past, past)
		keys = append(keys, k)
	}
	a, _ := s.Get("a")
	s.Use(a) // a is now the most recently used
	list, _ := s.List()
	if len(list) != 3 || list[0].Meta.Key != "a" || list[2].Meta.Key != "b" {
		t.Fatalf("order: %v", keysOf(list))
	}
	s.Limit = list[0].Disk + list[1].Disk // room for two
	removed, err := s.Prune("b")
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 1 || removed[0].Meta.Key != "c" {
		t.Fatalf("pruned %v, want c (b is kept, a was used last)", keysOf(removed))
	}
	if list, _ := s.List(); len(list) != 2 {
		t.Fatalf("left %v", keysOf(list))
	}
}

func keysOf(ts []*Template) []string {
	var out []string
	for _, t := range ts {
		out = append(out, t.Meta.Key)
	}
	return out
}
