package image

import (
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// mkfs says when the file system is too small, which buildExt4 answers
// with a larger one.
func TestMkfsTooSmall(t *testing.T) {
	dir := t.TempDir()
	stage := filepath.Join(dir, "stage")
	if err := os.Mkdir(stage, 0o700); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 4<<20) // not zeros: mkfs.ext4 -d would leave holes
	rand.Read(big)
	if err := os.WriteFile(filepath.Join(stage, "big"), big, 0o600); err != nil {
		t.Fatal(err)
	}
	err := mkfs(context.Background(), stage, filepath.Join(dir, "img"), 512, 64, uuidOf("a"))
	if !errors.Is(err, errNoSpace) {
		t.Errorf("mkfs of 4 MiB into 2 MiB = %v, want errNoSpace", err)
	}
}

// debugfs exits 0 whatever its commands do; a failed command is an error
// all the same.
func TestDebugfsReportsFailedCommands(t *testing.T) {
	dir := t.TempDir()
	stage := filepath.Join(dir, "stage")
	if err := os.Mkdir(stage, 0o700); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "img")
	if err := mkfs(context.Background(), stage, img, 1024, 64, uuidOf("b")); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(dir, "script")
	if err := os.WriteFile(script, []byte("sif \"/no such file\" uid 5\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := debugfs(context.Background(), img, script); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("debugfs with a failing command = %v, want its error", err)
	}
}

func TestQuote(t *testing.T) {
	for in, want := range map[string]string{`/a b`: `"/a b"`, `/a"b`: `"/a""b"`, `/#;\`: `"/#;\"`} {
		if got := quote(in); got != want {
			t.Errorf("quote(%q) = %s, want %s", in, got, want)
		}
	}
}
