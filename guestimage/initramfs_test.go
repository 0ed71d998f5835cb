package guestimage

import (
	"bytes"
	"flag"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"

	"github.com/stackvm/stack/internal/filenames"
)

var update = flag.Bool("update", false, "rewrite golden files")

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(p, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("read golden file (run with -update to create): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from golden file:\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

// fakeModTree writes a module tree with files named after fakeModulesDep.
func fakeModTree(t *testing.T) string {
	dir := t.TempDir()
	idx := fakeIndex(t, fakeModulesDep)
	for name, rel := range idx.Path {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("module "+name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestInitramfsLayout(t *testing.T) {
	modDir := fakeModTree(t)
	idx := fakeIndex(t, fakeModulesDep)
	mods, err := idx.ResolveGroups([]string{"boot:virtio_net", "virtio_mmio", "late:virtio-rng", "fs-9p:9p"})
	if err != nil {
		t.Fatal(err)
	}
	in := buildInputs{Init: []byte("INIT"), Busybox: []byte("BUSYBOX"), Release: "6.1.0-test", ModDir: modDir, Modules: mods}
	recs, err := buildRecords(in)
	if err != nil {
		t.Fatal(err)
	}
	for _, level := range []int{-1, 1, 9} {
		var buf bytes.Buffer
		if err := writeArchive(&buf, recs, level); err != nil {
			t.Fatal(err)
		}
		lines, err := Listing(bytes.NewReader(buf.Bytes()))
		if err != nil {
			t.Fatalf("Listing (level %d): %v", level, err)
		}
		golden(t, "fake-initramfs.golden", []byte(strings.Join(lines, "\n")+"\n"))
	}

	// Contents survive the round trip; the module list is in load order.
	var buf bytes.Buffer
	if err := writeArchive(&buf, recs, -1); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	err = cpio.ForEachRecord(cpio.Newc.Reader(bytes.NewReader(buf.Bytes())), func(r cpio.Record) error {
		if r.Mode&cpio.S_IFMT == cpio.S_IFREG {
			b, err := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
			if err != nil {
				return err
			}
			files[r.Name] = string(b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files["init"] != "INIT" || files["bin/busybox"] != "BUSYBOX" {
		t.Errorf("init/busybox contents wrong: %q %q", files["init"], files["bin/busybox"])
	}
	if got := files["lib/modules/6.1.0-test/kernel/drivers/net/virtio_net.ko"]; got != "module virtio_net" {
		t.Errorf("module contents: %q", got)
	}
	wantList := "# group path: load a group's lines in order, skipping loaded paths\n"
	for _, m := range mods {
		wantList += m.Group + " /lib/modules/6.1.0-test/" + m.Path + "\n"
	}
	if got := files[strings.TrimPrefix(filenames.GuestModuleList, "/")]; got != wantList {
		t.Errorf("module list:\n%s\nwant\n%s", got, wantList)
	}
}

func TestInitramfsRejectsCompressedModules(t *testing.T) {
	_, err := buildRecords(buildInputs{Release: "r", ModDir: t.TempDir(), Modules: []ModuleEntry{{"boot", "kernel/a.ko.xz"}}})
	if err == nil || !strings.Contains(err.Error(), "compressed") {
		t.Errorf("buildRecords with a .ko.xz: %v", err)
	}
}

// Every applet linked into the image must exist in the busybox that goes in.
func TestAppletsExistInBusybox(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		if testing.Short() {
			t.Skip("no /bin/busybox (apt package busybox-static)")
		}
		t.Fatalf("/bin/busybox (apt package busybox-static) is needed: %v", err)
	}
	out, err := exec.Command("/bin/busybox", "--list").Output()
	if err != nil {
		t.Fatalf("busybox --list: %v", err)
	}
	have := map[string]bool{}
	for _, a := range strings.Fields(string(out)) {
		have[a] = true
	}
	for _, a := range Applets {
		if !have[a] {
			t.Errorf("applet %q is not in /bin/busybox", a)
		}
	}
}

func TestStripModuleSignature(t *testing.T) {
	body := []byte("\x7fELF module body")
	sig := bytes.Repeat([]byte{0xAB}, 300)
	info := []byte{0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x2C} // PKEY_ID_PKCS7, sig_len 300
	signed := append(append(append(append([]byte(nil), body...), sig...), info...), moduleSigMagic...)
	if got := StripModuleSignature(signed); !bytes.Equal(got, body) {
		t.Errorf("stripped = %q, want %q", got, body)
	}
	if got := StripModuleSignature(body); !bytes.Equal(got, body) {
		t.Error("an unsigned module must stay as it is")
	}
	bogus := append(append([]byte("x"), info...), moduleSigMagic...) // sig_len larger than the file
	if got := StripModuleSignature(bogus); !bytes.Equal(got, bogus) {
		t.Error("a malformed signature must leave the module unchanged")
	}
}
