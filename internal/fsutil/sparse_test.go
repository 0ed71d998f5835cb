package fsutil

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// CopySparse copies the data and keeps the holes; DataRegions reports the
// data regions alone.
func TestCopySparse(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	const size = 64 << 20
	f.Truncate(size)
	f.WriteAt(bytes.Repeat([]byte("a"), 8192), 1<<20)
	f.WriteAt(bytes.Repeat([]byte("b"), 4096), 40<<20)
	var regions [][2]int64
	if err := DataRegions(f, func(off, n int64) error {
		regions = append(regions, [2]int64{off, n})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(regions) != 2 || regions[0][0] > 1<<20 || regions[1][0] > 40<<20 {
		t.Errorf("data regions %v, want two around 1 MiB and 40 MiB", regions)
	}
	dst := filepath.Join(dir, "dst")
	if err := CopySparse(dst, f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(dst)
	if !bytes.Equal(a, b) {
		t.Fatal("the copy differs")
	}
	var st syscall.Stat_t
	syscall.Stat(dst, &st)
	if st.Blocks*512 > 4<<20 {
		t.Errorf("the copy takes %d bytes on disk: its holes were filled", st.Blocks*512)
	}
	if err := CopySparse(dst, f); err == nil {
		t.Error("CopySparse overwrote an existing file")
	}
}
