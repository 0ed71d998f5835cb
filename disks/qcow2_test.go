package disks

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Headers of images that qemu-img made (their first KiB): the parser's
// expectations, and the fuzzer's seeds.
var qcow2Heads = map[string]qcow2Refs{
	"plain-v3.qcow2.head":      {Version: 3},
	"plain-v2.qcow2.head":      {Version: 2},
	"plain-2M.qcow2.head":      {Version: 3},
	"backing-v3.qcow2.head":    {Version: 3, BackingFile: "/etc/hostname"},
	"backing-v2.qcow2.head":    {Version: 2, BackingFile: "/etc/hostname"},
	"small-cluster.qcow2.head": {Version: 3, BackingFile: "/etc/hostname"},
	"datafile.qcow2.head":      {Version: 3, DataFile: "/tmp/qh/data.raw", HasDataFile: true},
}

func readHead(t testing.TB, name string) []byte {
	b, err := os.ReadFile(filepath.Join("testdata", "qcow2", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestReadQcow2Refs(t *testing.T) {
	for name, want := range qcow2Heads {
		got, err := readQcow2Refs(bytes.NewReader(readHead(t, name)))
		if err != nil || got != want {
			t.Errorf("%s: %+v, %v; want %+v", name, got, err, want)
		}
	}
	if _, err := readQcow2Refs(bytes.NewReader([]byte("raw data"))); !errors.Is(err, errNotQcow2) {
		t.Errorf("raw data: %v, want errNotQcow2", err)
	}
	// Headers QEMU would not open are errors, not images without refs.
	v3 := readHead(t, "backing-v3.qcow2.head")
	for name, mutate := range map[string]func(b []byte){
		"version 4":           func(b []byte) { b[7] = 4 },
		"cluster bits 30":     func(b []byte) { b[23] = 30 },
		"backing name far":    func(b []byte) { b[13] = 0xff },                  // offset 0xff0210
		"backing name long":   func(b []byte) { b[18] = 0x10 },                  // 4109 bytes
		"extension too large": func(b []byte) { b[0x74], b[0x75] = 0x7f, 0xff }, // past the backing name
		"truncated":           nil,
	} {
		b := append([]byte(nil), v3...)
		if mutate == nil {
			b = b[:80]
		} else {
			mutate(b)
		}
		if refs, err := readQcow2Refs(bytes.NewReader(b)); err == nil {
			t.Errorf("%s: read as %+v", name, refs)
		}
	}
}

// A base image whose qcow2 header points at a host file is refused with an
// error naming both; plain qcow2 and raw bases are not.
func TestCreateOverlayRefusesBaseThatPointsElsewhere(t *testing.T) {
	needTools(t, "qemu-img")
	ctx := context.Background()
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("host secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	backed := filepath.Join(dir, "backed.qcow2")
	runT(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", secret, "-F", "raw", backed)
	dataFile := filepath.Join(dir, "datafile.qcow2")
	runT(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file="+secret, dataFile, "1M")
	for base, names := range map[string]string{backed: "backing file", dataFile: "external data file"} {
		overlay := filepath.Join(dir, "overlay.qcow2")
		err := CreateOverlay(ctx, base, overlay)
		if err == nil || !strings.Contains(err.Error(), base) || !strings.Contains(err.Error(), names+`, "`+secret+`"`) {
			t.Errorf("overlay of %s: %v; want a refusal naming it and its %s %s", filepath.Base(base), err, names, secret)
		}
		if _, err := os.Stat(overlay); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("overlay of %s made: %v", filepath.Base(base), err)
		}
	}
	for _, format := range []string{"qcow2", "raw"} {
		base := filepath.Join(dir, "base."+format)
		runT(t, "qemu-img", "create", "-q", "-f", format, base, "1M")
		if err := CreateOverlay(ctx, base, filepath.Join(dir, format+"-overlay.qcow2")); err != nil {
			t.Errorf("a plain %s base: %v", format, err)
		}
	}
}

// Whatever the bytes, the parser returns (no panic, no read beyond the
// first cluster plus a name), and a name it returns is one QEMU would read.
func FuzzReadQcow2Refs(f *testing.F) {
	for name := range qcow2Heads {
		f.Add(readHead(f, name))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		refs, err := readQcow2Refs(bytes.NewReader(b))
		if err != nil {
			return
		}
		if len(refs.BackingFile) > qcow2MaxName || len(refs.DataFile) > 1<<qcow2MaxClusterBits {
			t.Fatalf("names of %d and %d bytes", len(refs.BackingFile), len(refs.DataFile))
		}
		if refs.Version != 2 && refs.Version != 3 {
			t.Fatalf("version %d accepted", refs.Version)
		}
	})
}
