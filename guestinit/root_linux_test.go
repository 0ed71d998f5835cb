//go:build linux

package guestinit

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// fakeRoot is an image's root in a temporary directory: a busybox-style
// /bin with an absolute symbolic link, a /usr/bin reached through a
// relative one, and links that point above the root.
func fakeRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "bin"), 0o755))
	must(os.MkdirAll(filepath.Join(root, "usr/lib/bin"), 0o755))
	must(os.MkdirAll(filepath.Join(root, "etc"), 0o755))
	must(os.WriteFile(filepath.Join(root, "bin/busybox"), []byte("#!/bin/busybox\n"), 0o755))
	must(os.WriteFile(filepath.Join(root, "bin/notexec"), nil, 0o644))
	must(os.Symlink("/bin/busybox", filepath.Join(root, "bin/sh")))
	must(os.Symlink("lib/bin", filepath.Join(root, "usr/bin")))
	must(os.WriteFile(filepath.Join(root, "usr/lib/bin/tool"), nil, 0o755))
	must(os.Symlink("../../../../../../..", filepath.Join(root, "up")))
	must(os.Symlink("/etc/shadow-of-the-host", filepath.Join(root, "etc/resolv.conf")))
	must(os.MkdirAll(filepath.Join(root, "var"), 0o755))
	must(os.Symlink("/srv/data", filepath.Join(root, "var/data")))   // dangling
	must(os.Symlink("../run/lock", filepath.Join(root, "var/lock"))) // dangling, relative
	must(os.Symlink("loop", filepath.Join(root, "loop")))
	must(os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0::/root:/bin/sh\nwww:x:33:33::/var/www:/bin/sh\n"), 0o644))
	must(os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\nwww:x:33:\nweb:x:44:www\n"), 0o644))
	return root
}

func TestResolveInRootStaysInside(t *testing.T) {
	root := fakeRoot(t)
	for _, tc := range []struct{ in, want string }{
		{"/bin/sh", "/bin/busybox"}, // absolute link, taken from the root
		{"/usr/bin/tool", "/usr/lib/bin/tool"},
		{"/up/bin/busybox", "/bin/busybox"}, // .. above the root stops at it
		{"/../../bin", "/bin"},
	} {
		got, err := resolveInRoot(root, tc.in, false)
		if err != nil {
			t.Errorf("%s: %v", tc.in, err)
			continue
		}
		if want := filepath.Join(root, tc.want); got != want {
			t.Errorf("%s resolved to %s, want %s", tc.in, got, want)
		}
	}
	if _, err := resolveInRoot(root, "/missing", false); err == nil {
		t.Error("a missing path resolved")
	}
}

func TestResolveInRootMkdir(t *testing.T) {
	root := fakeRoot(t)
	// Through the link that points above the root: created inside it.
	got, err := resolveInRoot(root, "/up/srv/data", true)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(root, "srv/data"); got != want {
		t.Fatalf("created %s, want %s", got, want)
	}
	if fi, err := os.Stat(got); err != nil || !fi.IsDir() {
		t.Fatalf("not a directory: %v", err)
	}
	// Idempotent.
	if again, err := resolveInRoot(root, "/srv/data", true); err != nil || again != got {
		t.Fatalf("second resolve: %s, %v", again, err)
	}
	// Through dangling links: their targets are created, as mkdir -p does.
	for in, want := range map[string]string{"/var/data/x": "srv/data/x", "/var/lock": "run/lock"} {
		got, err := resolveInRoot(root, in, true)
		if err != nil || got != filepath.Join(root, want) {
			t.Errorf("%s: created %q, %v; want %s", in, got, err, want)
		}
	}
	if got, err := resolveInRoot(root, "/loop/x", true); err == nil {
		t.Errorf("a link to itself resolved to %s", got)
	}
}

func TestLookPathInRoot(t *testing.T) {
	root := fakeRoot(t)
	for _, tc := range []struct{ file, path, want string }{
		{"sh", "/usr/bin:/bin", "/bin/sh"},
		{"tool", "/bin:/usr/bin", "/usr/bin/tool"},
	} {
		got, err := lookPath(root, tc.file, tc.path)
		if err != nil || got != tc.want {
			t.Errorf("lookPath(%s, %s) = %q, %v; want %q", tc.file, tc.path, got, err, tc.want)
		}
	}
	for _, file := range []string{"notexec", "missing"} {
		if got, err := lookPath(root, file, "/bin"); err == nil {
			t.Errorf("lookPath(%s) = %q, want not found", file, got)
		}
	}
}

func TestCommandUsesTheWorkloadsPath(t *testing.T) {
	root := &imageRoot{dir: fakeRoot(t), workDir: "/srv"}
	cmd, err := command(root, []string{"tool", "-x"}, []string{"PATH=/usr/bin", "HOME=/"})
	if err != nil {
		t.Fatal(err)
	}
	if cmd.Path != "/usr/bin/tool" || !slices.Equal(cmd.Args, []string{"tool", "-x"}) {
		t.Errorf("command: path %q args %q", cmd.Path, cmd.Args)
	}
	root.enter(cmd, "")
	if cmd.Dir != "/srv" || cmd.SysProcAttr.Chroot != root.dir || !cmd.SysProcAttr.Setsid {
		t.Errorf("entered: dir %q chroot %q", cmd.Dir, cmd.SysProcAttr.Chroot)
	}
	if _, err := command(root, []string{"sh"}, []string{"PATH=/nowhere"}); err == nil {
		t.Error("found sh outside the workload's PATH")
	}
}

func TestLookupUser(t *testing.T) {
	root := fakeRoot(t)
	for _, tc := range []struct {
		spec       string
		uid, gid   int
		groups     []int
		home       string
		shouldFail bool
	}{
		{spec: "", uid: 0, gid: 0, home: "/root"},
		{spec: "www", uid: 33, gid: 33, groups: []int{44}, home: "/var/www"},
		{spec: "www:root", uid: 33, gid: 0, home: "/var/www"},
		{spec: "1234:5678", uid: 1234, gid: 5678, home: "/"}, // numeric: need not be listed
		{spec: "nobody", shouldFail: true},
	} {
		eu, err := lookupUser(root, tc.spec)
		if tc.shouldFail {
			if err == nil {
				t.Errorf("%q resolved to %+v", tc.spec, eu)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.spec, err)
			continue
		}
		if eu.Uid != tc.uid || eu.Gid != tc.gid || eu.Home != tc.home || (len(tc.groups) > 0 && !slices.Equal(eu.Sgids, tc.groups)) {
			t.Errorf("%q = %+v", tc.spec, eu)
		}
	}
}

func TestWriteEtcReplacesLinks(t *testing.T) {
	dir := fakeRoot(t)
	r := &imageRoot{dir: dir}
	if err := r.writeEtc(map[string][]byte{"resolv.conf": []byte("nameserver 10.0.0.1\n"), "hostname": []byte("web\n")}); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "etc/resolv.conf")
	if fi, err := os.Lstat(p); err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("resolv.conf is not a regular file: %v", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "nameserver 10.0.0.1\n" {
		t.Errorf("resolv.conf: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "etc/hostname")); string(b) != "web\n" {
		t.Errorf("hostname: %q", b)
	}
}
