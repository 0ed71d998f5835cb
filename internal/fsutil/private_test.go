package fsutil

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestMkdirPrivate(t *testing.T) {
	root := t.TempDir()
	fresh := filepath.Join(root, "a", "b")
	if err := MkdirPrivate(fresh); err != nil {
		t.Fatalf("fresh directory: %v", err)
	}
	if fi, _ := os.Stat(fresh); fi.Mode().Perm() != 0o700 {
		t.Fatalf("fresh directory mode %o, want 0700", fi.Mode().Perm())
	}
	open := filepath.Join(root, "open")
	os.Mkdir(open, 0o700)
	os.Chmod(open, 0o755)
	link := filepath.Join(root, "link")
	os.Symlink(fresh, link)
	bad := []string{open, link}
	if os.Getuid() == 0 { // only root can give a directory away
		other := filepath.Join(root, "other")
		os.Mkdir(other, 0o700)
		if err := os.Chown(other, 65534, -1); err != nil {
			t.Fatal(err)
		}
		bad = append(bad, other)
	}
	for _, d := range bad {
		if err := MkdirPrivate(d); !errors.Is(err, ErrNotPrivate) {
			t.Errorf("MkdirPrivate(%s) = %v, want ErrNotPrivate", d, err)
		}
	}
}
