package guestinit

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"testing"
)

func TestFindDiskBySerial(t *testing.T) {
	sys := t.TempDir()
	for name, serial := range map[string]string{"vda": "stack-config\n", "vdb": "vol-data\x00\x00", "vdc": ""} {
		if err := os.MkdirAll(filepath.Join(sys, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if serial != "" {
			if err := os.WriteFile(filepath.Join(sys, name, "serial"), []byte(serial), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := os.MkdirAll(filepath.Join(sys, "loop0"), 0o755); err != nil {
		t.Fatal(err)
	}
	for serial, want := range map[string]string{"stack-config": "/dev/vda", "vol-data": "/dev/vdb"} {
		got, err := FindDiskBySerial(sys, serial)
		if err != nil || got != want {
			t.Errorf("FindDiskBySerial(%q) = %q, %v; want %q", serial, got, err, want)
		}
	}
	if _, err := FindDiskBySerial(sys, "missing"); err == nil {
		t.Error("FindDiskBySerial found a disk that does not exist")
	}
	if _, err := FindDiskBySerial(filepath.Join(sys, "nope"), "x"); err == nil {
		t.Error("FindDiskBySerial on a missing sysfs dir must fail")
	}
}

func TestHasExtFilesystem(t *testing.T) {
	blank := make([]byte, 64*1024)
	if ok, err := HasExtFilesystem(bytes.NewReader(blank)); ok || err != nil {
		t.Errorf("blank disk: got %v, %v", ok, err)
	}
	if ok, err := HasExtFilesystem(bytes.NewReader([]byte("tiny"))); ok || err != nil {
		t.Errorf("tiny disk: got %v, %v", ok, err)
	}
	fake := append([]byte(nil), blank...)
	fake[1080], fake[1081] = 0x53, 0xEF
	if ok, err := HasExtFilesystem(bytes.NewReader(fake)); !ok || err != nil {
		t.Errorf("superblock magic: got %v, %v", ok, err)
	}
	if testing.Short() {
		return
	}
	// A real ext4 made the way the host formats volumes.
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		t.Fatalf("mkfs.ext4 (apt package e2fsprogs) is needed: %v", err)
	}
	img := filepath.Join(t.TempDir(), "v.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 8<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mkfs, "-q", "-F", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if ok, err := HasExtFilesystem(f); !ok || err != nil {
		t.Errorf("mkfs.ext4 image: got %v, %v", ok, err)
	}
}

func TestParseModuleList(t *testing.T) {
	got := ParseModuleList([]byte("# group path\nboot /lib/modules/r/a.ko\n\n  fs-9p   /lib/modules/r/b.ko  \nbad line here\nboot relative.ko\n"))
	want := []ModuleEntry{{"boot", "/lib/modules/r/a.ko"}, {"fs-9p", "/lib/modules/r/b.ko"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ParseModuleList = %q, want %q", got, want)
	}
}
