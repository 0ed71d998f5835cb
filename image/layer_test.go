package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// newTestTree is a tree staged in a fresh directory root, inside a parent
// that holds a sentinel file next to it; it returns the tree and the
// parent.
func newTestTree(t testing.TB) (*tree, string) {
	parent := t.TempDir()
	if err := os.WriteFile(filepath.Join(parent, "sentinel"), []byte("outside"), 0o600); err != nil {
		t.Fatal(err)
	}
	stage := filepath.Join(parent, "root")
	if err := os.Mkdir(stage, 0o700); err != nil {
		t.Fatal(err)
	}
	root, err := os.OpenRoot(stage)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	return newTree(root), parent
}

// paths lists the tree's names ("" for the root left out), sorted.
func (tr *tree) paths() []string {
	var out []string
	tr.walk(func(p string, n *node) error {
		if p != "" {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// checkStaging checks that the staging directory and the tree agree (every
// staged node on disk with its type, nothing on disk the tree does not
// know) and that nothing outside the staging directory changed.
func checkStaging(t testing.TB, tr *tree, parent string) {
	t.Helper()
	entries, err := os.ReadDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"root", "sentinel"}) {
		t.Fatalf("the staging directory's parent holds %v, want [root sentinel]", names)
	}
	if b, _ := os.ReadFile(filepath.Join(parent, "sentinel")); string(b) != "outside" {
		t.Fatalf("the sentinel outside the root was changed: %q", b)
	}
	want := map[string]byte{}
	tr.walk(func(p string, n *node) error {
		if p != "" && staged(n.ino.typ) {
			want[p] = n.ino.typ
		}
		return nil
	})
	stage := filepath.Join(parent, "root")
	err = filepath.WalkDir(stage, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(stage, p)
		if rel == "." {
			return nil
		}
		typ, ok := want[rel]
		if !ok {
			t.Errorf("staged %s is not in the tree", rel)
			return nil
		}
		delete(want, rel)
		got := map[fs.FileMode]byte{0: tar.TypeReg, fs.ModeDir: tar.TypeDir, fs.ModeSymlink: tar.TypeSymlink}[d.Type()]
		if got != typ {
			t.Errorf("staged %s has type %v, the tree says %q", rel, d.Type(), typ)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for p := range want {
		t.Errorf("%s is in the tree but not staged", p)
	}
}

func applyAll(t testing.TB, tr *tree, layers ...[]byte) error {
	for _, l := range layers {
		if err := tr.apply(context.Background(), bytes.NewReader(l)); err != nil {
			return err
		}
	}
	return nil
}

func TestApplyWhiteouts(t *testing.T) {
	tr, parent := newTestTree(t)
	err := applyAll(t, tr,
		tarOf(t,
			ent{Name: "a/x", Data: "x"}, ent{Name: "a/y", Data: "y"},
			ent{Name: "d/old", Data: "old"}, ent{Name: "d/sub/deep", Data: "deep"},
			ent{Name: "e/keep", Data: "keep"}, ent{Name: "e/lower", Data: "lower"},
			ent{Name: "f", Data: "f"}, ent{Name: "g/h", Data: "h"},
		),
		tarOf(t,
			ent{Name: "a/.wh.x"},
			ent{Name: "a/.wh.missing"},                              // nothing to hide
			ent{Name: "d/new", Data: "new"},                         // before the marker
			ent{Name: "d/sub/fresh", Data: "fresh"},                 // under a lower directory
			ent{Name: "d/.wh..wh..opq"},                             // hides d/old and d/sub/deep
			ent{Name: "e/added", Data: "added"}, ent{Name: ".wh.e"}, // same layer: only lower entries go
			ent{Name: "f2", Data: "f2"}, ent{Name: ".wh.f2"}, // a same-layer file stays
			ent{Name: ".wh.g"},
			ent{Name: "a/.wh..wh.plnk"}, // aufs bookkeeping: dropped
		),
	)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"a", "a/y", "d", "d/new", "d/sub", "d/sub/fresh", "e", "e/added", "f", "f2"}
	if got := tr.paths(); !slices.Equal(got, want) {
		t.Errorf("tree %v\nwant %v", got, want)
	}
	checkStaging(t, tr, parent)
}

func TestApplyReplaces(t *testing.T) {
	tr, parent := newTestTree(t)
	err := applyAll(t, tr,
		tarOf(t,
			ent{Name: "dir/a", Data: "a"}, ent{Name: "file", Data: "file"},
			ent{Name: "shared", Data: "shared"}, ent{Name: "alias", Type: tar.TypeLink, Link: "shared"},
			ent{Name: "keepdir/", Type: tar.TypeDir, Mode: 0o700}, ent{Name: "keepdir/child", Data: "c"},
		),
		tarOf(t,
			ent{Name: "dir", Data: "a file over a directory"},
			ent{Name: "file/", Type: tar.TypeDir},
			ent{Name: "shared", Data: "new inode"},           // alias keeps the old content
			ent{Name: "keepdir/", Type: tar.TypeDir, UID: 7}, // merges: child stays
			ent{Name: "dev", Type: tar.TypeChar, Major: 1, Minor: 3},
		),
	)
	if err != nil {
		t.Fatal(err)
	}
	checkStaging(t, tr, parent)
	read := func(p string) string {
		b, err := tr.root.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if got := read("dir"); got != "a file over a directory" {
		t.Errorf("dir = %q", got)
	}
	if read("shared") != "new inode" || read("alias") != "shared" {
		t.Errorf("shared, alias = %q, %q: a file replaced under a hard link must not change the link", read("shared"), read("alias"))
	}
	if n, _ := tr.lookup("", "keepdir"); n == nil || n.ino.uid != 7 || n.children["child"] == nil {
		t.Errorf("keepdir = %+v: a directory over a directory keeps its children and takes the new owner", n)
	}
	if n, _ := tr.lookup("", "dev"); n == nil || n.ino.typ != tar.TypeChar || n.ino.major != 1 || n.ino.minor != 3 {
		t.Errorf("dev = %+v", n)
	}
}

func TestApplyRefuses(t *testing.T) {
	for _, tc := range []struct {
		name    string
		entries []ent
		want    string
	}{
		{"dotdot", []ent{{Name: "a/../../x"}}, `path escapes the root`},
		{"dotdot inside", []ent{{Name: "a/../b"}}, `path escapes the root`},
		{"absolute", []ent{{Name: "/x"}}, "absolute path"},
		{"through symlink", []ent{{Name: "s", Type: tar.TypeSymlink, Link: "."}, {Name: "s/x"}}, `goes through symlink "s"`},
		{"under a file", []ent{{Name: "f"}, {Name: "f/x"}}, `"f" is not a directory`},
		{"hard link to missing", []ent{{Name: "h", Type: tar.TypeLink, Link: "nothing"}}, "does not exist"},
		{"hard link to directory", []ent{{Name: "d/", Type: tar.TypeDir}, {Name: "h", Type: tar.TypeLink, Link: "d"}}, "hard link to directory"},
		{"hard link to root", []ent{{Name: "h", Type: tar.TypeLink, Link: "./"}}, "hard link to the root"},
		{"hard link escape", []ent{{Name: "h", Type: tar.TypeLink, Link: "../sentinel"}}, "path escapes the root"},
		{"root not a dir", []ent{{Name: ".", Type: tar.TypeReg}}, "the root is not a directory"},
		{"empty symlink", []ent{{Name: "s", Type: tar.TypeSymlink}}, "empty target"},
		{"unknown type", []ent{{Name: "x", Type: 'Z'}}, "unsupported tar entry type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, parent := newTestTree(t)
			err := applyAll(t, tr, tarOf(t, tc.entries...))
			var el *errLayer
			if !errors.As(err, &el) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("apply = %v, want a refusal containing %q", err, tc.want)
			}
			checkStaging(t, tr, parent)
		})
	}
}

func TestApplyBlobChecksDiffID(t *testing.T) {
	tr, _ := newTestTree(t)
	b := tarOf(t, ent{Name: "x", Data: "x"})
	err := tr.applyBlob(context.Background(), bytes.NewReader(b), "sha256:"+strings.Repeat("0", 64))
	if !errors.Is(err, errDiffID) {
		t.Errorf("applyBlob with a wrong diff ID = %v, want errDiffID", err)
	}
}

// FuzzApplyLayer applies arbitrary bytes as two layers (the same bytes
// twice: replacements, whiteouts of what the first made): whatever it does
// or refuses, it must not panic, must not touch anything outside the
// staging directory, and must leave the tree and the staging directory in
// agreement.
func FuzzApplyLayer(f *testing.F) {
	for _, seed := range [][]ent{
		{{Name: "a/b", Data: "x"}, {Name: "a/.wh.b"}, {Name: "a/.wh..wh..opq"}, {Name: "c", Type: tar.TypeLink, Link: "a/b"}},
		{{Name: "s", Type: tar.TypeSymlink, Link: "/"}, {Name: "s/escape", Data: "x"}},
		{{Name: "s", Type: tar.TypeSymlink, Link: "../.."}, {Name: "h", Type: tar.TypeLink, Link: "s"}},
		{{Name: "../sentinel", Data: "x"}},
		{{Name: "d/", Type: tar.TypeDir, Mode: 0o4777}, {Name: "d", Data: "file"}, {Name: ".wh.d"}},
		{{Name: "p", Type: tar.TypeFifo}, {Name: "q", Type: tar.TypeLink, Link: "p"}, {Name: "p/x"}},
	} {
		f.Add(tarOf(f, seed...))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		// A few header bytes can declare a sparse file of exabytes,
		// which takes as long to expand as its size says: bound the
		// harness, not the code.
		if declared(data) > 16<<20 {
			t.Skip("declares more than 16 MiB of file data")
		}
		tr, parent := newTestTree(t)
		ctx := context.Background()
		if err := tr.apply(ctx, bytes.NewReader(data)); err == nil {
			_ = tr.apply(ctx, bytes.NewReader(data))
		}
		checkStaging(t, tr, parent)
	})
}

// declared sums the sizes the tar headers of data declare, reading as far
// as they parse.
func declared(data []byte) int64 {
	var sum int64
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err != nil {
			return sum
		}
		if h.Size > 0 {
			sum += h.Size
		}
		if sum < 0 {
			return math.MaxInt64
		}
	}
}

func TestCopySparse(t *testing.T) {
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data := make([]byte, 8<<20)
	copy(data[5<<20:], "middle")
	data[len(data)-1] = 1
	if err := copySparse(f, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(f.Name())
	if !bytes.Equal(got, data) {
		t.Error("copySparse changed the content")
	}
	var st syscall.Stat_t
	if err := syscall.Stat(f.Name(), &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 > 1<<20 {
		t.Errorf("8 MiB of mostly zeros take %d bytes on disk, want holes", st.Blocks*512)
	}
}
