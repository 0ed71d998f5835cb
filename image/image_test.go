package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"flag"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/klauspost/compress/zstd"

	"github.com/stackvm/stack/internal/filenames"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// capNetRaw is a security.capability value (VFS_CAP_REVISION_2) granting
// CAP_NET_RAW, as ping carries it.
var capNetRaw = string([]byte{1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})

// testConfig is the config of the test image.
var testConfig = v1.Config{
	Entrypoint:   []string{"/bin/sh"},
	Cmd:          []string{"-c", "echo hi"},
	Env:          []string{"PATH=/usr/bin:/bin", "PGDATA=/var/lib/postgresql/data"},
	WorkingDir:   "/var/lib/postgresql",
	User:         "postgres",
	ExposedPorts: map[string]struct{}{"5432/tcp": {}, "80/tcp": {}},
}

// testImage has two layers exercising what conversion must keep: the
// second replaces, hides (whiteout, opaque directory) and adds (hard link,
// symlinks, devices, xattrs) on top of the first, which has foreign owners
// and setuid, setgid and sticky bits.
func testImage(t testing.TB) v1.Image {
	l1 := layerOf(t,
		ent{Name: "./", Type: tar.TypeDir},
		ent{Name: "etc/", Type: tar.TypeDir},
		ent{Name: "etc/passwd", Data: "root:x:0:0::/root:/bin/sh\npostgres:x:999:999::/var/lib/postgresql:/bin/sh\n"},
		ent{Name: "etc/old", Data: "old"},
		ent{Name: "etc/kept", Data: "kept"},
		ent{Name: "bin/", Type: tar.TypeDir},
		ent{Name: "bin/sh", Mode: 0o755, Data: "#!shell"},
		ent{Name: "usr/bin/su", Mode: 0o4755, Data: "su"}, // parents implicit
		ent{Name: "usr/bin/wall", Mode: 0o2755, GID: 5, Data: "wall"},
		ent{Name: "tmp/", Type: tar.TypeDir, Mode: 0o1777},
		ent{Name: "opaq/", Type: tar.TypeDir},
		ent{Name: "opaq/x", Data: "x"},
		ent{Name: "opaq/sub/", Type: tar.TypeDir},
		ent{Name: "opaq/sub/y", Data: "y"},
		ent{Name: "gone/", Type: tar.TypeDir},
		ent{Name: "gone/f", Data: "f"},
		ent{Name: "swap/", Type: tar.TypeDir},
		ent{Name: "swap/a", Data: "a"},
		ent{Name: "var/lib/postgresql/", Type: tar.TypeDir, Mode: 0o700, UID: 999, GID: 999},
		ent{Name: "var/lib/postgresql/data", Mode: 0o600, UID: 999, GID: 999, Data: "pgdata"},
		ent{Name: "home/far", UID: 100000, GID: 100001, Data: "a uid above 16 bits"},
	)
	l2 := layerOf(t,
		ent{Name: "etc/.wh.old"},
		ent{Name: ".wh.gone"},
		ent{Name: "opaq/z", Data: "z"}, // before the marker, same layer: kept
		ent{Name: "opaq/.wh..wh..opq"},
		ent{Name: "etc/kept", Mode: 0o600, Data: "kept, rewritten"},
		ent{Name: "swap", Data: "a file now"},
		ent{Name: "bin/link", Type: tar.TypeLink, Link: "bin/sh"},
		ent{Name: "bin/ls", Type: tar.TypeSymlink, Link: "sh"},
		ent{Name: "usr/bin/abs", Type: tar.TypeSymlink, Link: "/bin/sh"},
		ent{Name: "usr/bin/ping", Mode: 0o755, Data: "ping", Xattrs: map[string]string{"security.capability": capNetRaw}},
		ent{Name: "etc/xattr", Data: "x", Xattrs: map[string]string{"user.test": "hello", "trusted.overlay.test": "y"}},
		ent{Name: "dev/", Type: tar.TypeDir},
		ent{Name: "dev/null", Type: tar.TypeChar, Mode: 0o666, Major: 1, Minor: 3},
		ent{Name: "dev/null2", Type: tar.TypeLink, Link: "dev/null"}, // a node of its own
		ent{Name: "dev/sda", Type: tar.TypeBlock, Mode: 0o660, GID: 6, Major: 8, Minor: 0},
		ent{Name: "dev/fifo", Type: tar.TypeFifo, Mode: 0o600},
		ent{Name: "file with \"quotes\" and spaces", Data: "odd name"},
	)
	return imageOf(t, "", testConfig, l1, l2)
}

func TestPullConvertsLayersIntoExt4(t *testing.T) {
	img := testImage(t)
	ref := serveImage(t, img)
	cache := t.TempDir()

	var phases []Phase
	got, err := Pull(context.Background(), ref, Options{CacheRoot: cache, Progress: func(p Progress) {
		if len(phases) == 0 || phases[len(phases)-1] != p.Phase {
			phases = append(phases, p.Phase)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	wantID, _ := img.ConfigName()
	wantManifest, _ := img.Digest()
	if got.ID != wantID.String() || got.ManifestDigest != wantManifest.String() {
		t.Errorf("ID, manifest digest = %s, %s; want %s, %s", got.ID, got.ManifestDigest, wantID, wantManifest)
	}
	if want := []Phase{PhaseResolve, PhaseLayer, PhaseFS, PhaseDone}; !reflect.DeepEqual(phases, want) {
		t.Errorf("progress phases %v, want %v", phases, want)
	}
	wantCfg := Config{Entrypoint: []string{"/bin/sh"}, Cmd: []string{"-c", "echo hi"},
		Env: []string{"PATH=/usr/bin:/bin", "PGDATA=/var/lib/postgresql/data"}, WorkingDir: "/var/lib/postgresql",
		User: "postgres", ExposedPorts: []string{"5432/tcp", "80/tcp"}}
	if !reflect.DeepEqual(got.Config, wantCfg) {
		t.Errorf("config %+v, want %+v", got.Config, wantCfg)
	}
	if got.FSType != "ext4" || got.RootFS != filepath.Join(filenames.OCIImage(cache, got.ID), "rootfs.ext4") {
		t.Errorf("fs type %q, root fs %q", got.FSType, got.RootFS)
	}
	loaded, err := Load(cache, got.ID)
	if err != nil || !reflect.DeepEqual(loaded.Config, got.Config) || loaded.RootFS != got.RootFS {
		t.Errorf("Load = %+v, %v; want %+v", loaded, err, got)
	}
	fsck(t, got.RootFS)

	mnt := mountRO(t, got.RootFS)
	list := listing(t, mnt)
	golden := filepath.Join("testdata", "rootfs.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(list), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to write it)", err)
	}
	if list != string(want) {
		t.Errorf("converted tree differs from %s (-update rewrites it):\ngot:\n%s\nwant:\n%s", golden, list, want)
	}
	// The golden is checked by eye once; these say what it must show.
	for _, must := range []string{
		"usr/bin/su -4755 0:0", "usr/bin/wall -2755 0:5", "tmp d1777 0:0",
		"var/lib/postgresql d0700 999:999", "var/lib/postgresql/data -0600 999:999",
		"home/far -0644 100000:100001", "bin/link -0755 0:0 size=7 sha256=", "link=bin/link nlink=2",
		"bin/ls l0777 0:0 -> sh", "usr/bin/abs l0777 0:0 -> /bin/sh", "dev/null c0666 0:0 dev=1,3",
		"dev/null2 c0666 0:0 dev=1,3", "dev/sda b0660 0:6 dev=8,0", "dev/fifo p0600 0:0", "etc/kept -0600 0:0 size=15",
		"swap -0644 0:0 size=10", "opaq/z -0644", "user.test=68656c6c6f",
		"etc/xattr -0644 0:0 size=1 sha256=2d711642b726 xattrs=user.test=68656c6c6f\n",
		"security.capability=0100000200200000", "file with \"quotes\" and spaces -0644",
	} {
		if !strings.Contains(list, must) {
			t.Errorf("converted tree lacks %q", must)
		}
	}
	// Times are the image's (the golden leaves them out).
	for _, p := range []string{"bin/sh", "bin/ls", "dev/null", "etc", "var/lib/postgresql/data", "."} {
		fi, err := os.Lstat(filepath.Join(mnt, p))
		if err != nil || !fi.ModTime().Equal(epoch) {
			t.Errorf("%s: mtime %v, %v; want %v", p, fi.ModTime(), err, epoch)
		}
	}
	for _, l := range strings.Split(list, "\n") {
		for _, gone := range []string{"etc/old", "gone", "opaq/x", "opaq/sub", "swap/a", "lost+found"} {
			if strings.HasPrefix(l, gone+" ") || strings.HasPrefix(l, gone+"/") {
				t.Errorf("converted tree still has %s", l)
			}
		}
	}
	if strings.Contains(list, ".wh.") {
		t.Error("converted tree has whiteout files")
	}
}

// A conversion by a user who is not root stages files it owns itself: the
// file system image must still carry the image's owners. (The staged tree
// is given to nobody, as a conversion by nobody would leave it.)
func TestConvertWithoutRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("not root: cannot give the staged tree to another user (run as a user, every conversion takes this path)")
	}
	stagedHook = func(dir string) error {
		return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(p, 65534, 65534)
		})
	}
	defer func() { stagedHook = nil }()
	got, err := Pull(context.Background(), serveImage(t, testImage(t)), Options{CacheRoot: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	fsck(t, got.RootFS)
	want, err := os.ReadFile(filepath.Join("testdata", "rootfs.golden"))
	if err != nil {
		t.Fatal(err)
	}
	if list := listing(t, mountRO(t, got.RootFS)); list != string(want) {
		t.Errorf("converted tree differs from testdata/rootfs.golden:\n%s", list)
	}
}

// compressArchive writes archive compressed (ext gz or zst) beside it.
func compressArchive(t *testing.T, archive, ext string) string {
	t.Helper()
	data, err := os.ReadFile(archive)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	var w io.WriteCloser = gzip.NewWriter(&b)
	if ext == "zst" {
		if w, err = zstd.NewWriter(&b); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	out := archive + "." + ext
	if err := os.WriteFile(out, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return out
}

// The same image through an OCI layout, a docker save archive and one
// compressed with gzip or zstd has the same ID and converts to the same tree; the registry and the layout agree
// on the manifest digest too.
func TestTransportsAgree(t *testing.T) {
	img := testImage(t)
	ref := serveImage(t, img)
	dir := t.TempDir()
	writeLayout(t, filepath.Join(dir, "layout"), layoutItem{Tag: "v1", Image: img})
	archive := filepath.Join(dir, "app.tar")
	tag, err := name.NewTag("test/app:1")
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(archive, tag, img); err != nil {
		t.Fatal(err)
	}

	// docker save | gzip, | zstd: read through a decompressed copy.
	compressedArchives := []string{"docker-archive:" + compressArchive(t, archive, "gz"), "docker-archive:" + compressArchive(t, archive, "zst")}

	var imgs []*Image
	var lists []string
	for _, ref := range append([]string{ref, "oci:" + filepath.Join(dir, "layout") + ":v1", "oci:" + filepath.Join(dir, "layout"), "docker-archive:" + archive}, compressedArchives...) {
		got, err := Pull(context.Background(), ref, Options{CacheRoot: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		imgs = append(imgs, got)
		if os.Geteuid() == 0 {
			lists = append(lists, listing(t, mountRO(t, got.RootFS)))
		}
	}
	for i, got := range imgs[1:] {
		if got.ID != imgs[0].ID || !reflect.DeepEqual(got.Config, imgs[0].Config) || !reflect.DeepEqual(got.Layers, imgs[0].Layers) {
			t.Errorf("%s: ID %s, config %+v; the registry's: %s, %+v", got.Ref, got.ID, got.Config, imgs[0].ID, imgs[0].Config)
		}
		if len(lists) > 0 && lists[i+1] != lists[0] {
			t.Errorf("%s converts to another tree:\n%s\nthe registry's:\n%s", got.Ref, lists[i+1], lists[0])
		}
	}
	if imgs[1].ManifestDigest != imgs[0].ManifestDigest || imgs[3].ManifestDigest != "" {
		t.Errorf("manifest digests: registry %s, layout %s, archive %q", imgs[0].ManifestDigest, imgs[1].ManifestDigest, imgs[3].ManifestDigest)
	}
	if len(lists) == 0 {
		t.Log("not root: compared IDs and configs only, not the mounted trees")
	}
}

// assertCacheClean checks that a failed pull left no image and no
// conversion directory: at most lock files.
func assertCacheClean(t *testing.T, cache string) {
	t.Helper()
	entries, _ := os.ReadDir(filenames.OCIImages(cache))
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".lock") {
			t.Errorf("failed pull left %s in the cache", e.Name())
		}
	}
}

// Every refusal names the image and the reason, and leaves nothing in the
// cache (registry errors in detail: TestResolveRefuses).
func TestPullRefusesBadInput(t *testing.T) {
	isolate(t)
	host := serve(t, nil)
	good := imageOf(t, "", v1.Config{}, layerOf(t, ent{Name: "ok", Data: "ok"}))
	push(t, host+"/good:1", good)
	push(t, host+"/arm:1", imageOf(t, "arm64", v1.Config{}, layerOf(t, ent{Name: "arch", Data: "arm64"})))
	// A config that names another digest for the layer than its content
	// has: corrupt, or tampered with in transit.
	cf, _ := good.ConfigFile()
	cf = cf.DeepCopy()
	cf.RootFS.DiffIDs[0] = v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}
	bad, err := mutate.ConfigFile(good, cf)
	if err != nil {
		t.Fatal(err)
	}
	push(t, host+"/corrupt:1", bad)

	escape := func(layers ...[]ent) v1.Image {
		var ls []v1.Layer
		for _, l := range layers {
			ls = append(ls, layerOf(t, l...))
		}
		return imageOf(t, "", v1.Config{}, ls...)
	}
	push(t, host+"/dotdot:1", escape([]ent{{Name: "../evil", Data: "x"}}))
	push(t, host+"/abs:1", escape([]ent{{Name: "/etc/evil", Data: "x"}}))
	push(t, host+"/symlink:1", escape([]ent{{Name: "link", Type: tar.TypeSymlink, Link: "/tmp"}}, []ent{{Name: "link/evil", Data: "x"}}))
	push(t, host+"/relsymlink:1", escape([]ent{{Name: "up", Type: tar.TypeSymlink, Link: "../../.."}, {Name: "up/evil", Data: "x"}}))
	push(t, host+"/hardlink:1", escape([]ent{{Name: "h", Type: tar.TypeLink, Link: "../../etc/passwd"}}))
	push(t, host+"/abshardlink:1", escape([]ent{{Name: "h", Type: tar.TypeLink, Link: "/etc/passwd"}}))
	push(t, host+"/linkvialink:1", escape([]ent{{Name: "l", Type: tar.TypeSymlink, Link: "/etc"}, {Name: "h", Type: tar.TypeLink, Link: "l/passwd"}}))

	for _, tc := range []struct{ ref, want string }{
		{host + "/nosuch:1", "no such image nosuch in registry " + host},
		{host + "/good:2", `no such tag or digest "2" of good`},
		{host + "/arm:1", "image is linux/arm64, and VMs run linux/amd64"},
		{host + "/corrupt:1", "layer 1 of 1 (sha256:abab"},
		{host + "/dotdot:1", `entry "../evil": path escapes the root`},
		{host + "/abs:1", `entry "/etc/evil": absolute path`},
		{host + "/symlink:1", `entry "link/evil": path goes through symlink "link"`},
		{host + "/relsymlink:1", `entry "up/evil": path goes through symlink "up"`},
		{host + "/hardlink:1", `entry "h": hard link target "../../etc/passwd": path escapes the root`},
		{host + "/abshardlink:1", `entry "h": hard link target "/etc/passwd": absolute path`},
		{host + "/linkvialink:1", `entry "h": path goes through symlink "l"`},
	} {
		t.Run(strings.TrimPrefix(tc.ref, host+"/"), func(t *testing.T) {
			cache := t.TempDir()
			_, err := Pull(context.Background(), tc.ref, Options{CacheRoot: cache})
			if err == nil {
				t.Fatalf("Pull(%s) succeeded", tc.ref)
			}
			t.Log(err)
			if !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "pull ") {
				t.Errorf("Pull(%s) = %v\nwant an error naming the image and containing %q", tc.ref, err, tc.want)
			}
			assertCacheClean(t, cache)
		})
	}
	if _, err := os.Stat("/tmp/evil"); err == nil {
		t.Error("a layer wrote /tmp/evil")
	}

}

// A corrupt blob in an OCI layout (a flipped byte) is caught, and leaves
// nothing in the cache.
func TestPullRefusesCorruptLayoutBlob(t *testing.T) {
	img := imageOf(t, "", v1.Config{}, layerOf(t, ent{Name: "data", Data: strings.Repeat("stack ", 1000)}))
	dir := filepath.Join(t.TempDir(), "layout")
	writeLayout(t, dir, layoutItem{Image: img})
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	blob := filepath.Join(dir, "blobs", d.Algorithm, d.Hex)
	b, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(blob, b, 0o644); err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	_, err = Pull(context.Background(), "oci:"+dir, Options{CacheRoot: cache})
	if err == nil || !strings.Contains(err.Error(), "layer 1 of 1") {
		t.Fatalf("Pull of a corrupt layer = %v, want an error naming the layer", err)
	}
	assertCacheClean(t, cache)
}

// An interrupted conversion (the context cancelled in the middle, or a
// leftover of a killed one) is never taken for complete, and the next pull
// converts anew.
func TestInterruptedConversionIsNotComplete(t *testing.T) {
	img := testImage(t)
	ref := serveImage(t, img)
	cache := t.TempDir()
	id, _ := img.ConfigName()

	ctx, cancel := context.WithCancel(context.Background())
	_, err := Pull(ctx, ref, Options{CacheRoot: cache, Progress: func(p Progress) {
		if p.Phase == PhaseLayer && p.Layer == 2 {
			cancel()
		}
	}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Pull = %v, want context.Canceled", err)
	}
	assertCacheClean(t, cache)
	if _, err := Load(cache, id.String()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load after a cancelled conversion = %v, want not exist", err)
	}

	// What a killed conversion leaves: its temp directory, and (were the
	// final rename not the last step) an image directory without metadata.
	key := filenames.OCIImageKey(id.String())
	leftTmp := filepath.Join(filenames.OCIImages(cache), filenames.OCITempPrefix+key+"-killed")
	half := filenames.OCIImage(cache, id.String())
	for _, d := range []string{filepath.Join(leftTmp, "tree"), half} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(half, filenames.OCIRootFS), []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(cache, id.String()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load of an image directory without metadata = %v, want not exist", err)
	}
	before := conversions.Load()
	got, err := Pull(context.Background(), ref, Options{CacheRoot: cache})
	if err != nil {
		t.Fatal(err)
	}
	if n := conversions.Load() - before; n != 1 {
		t.Errorf("%d conversions, want 1", n)
	}
	if _, err := os.Stat(leftTmp); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("leftover %s still there: %v", leftTmp, err)
	}
	if fi, err := os.Stat(got.RootFS); err != nil || fi.Size() < 1<<20 {
		t.Errorf("root fs after the leftovers: %v, %v", fi, err)
	}
	fsck(t, got.RootFS)
}

func TestConcurrentPullsConvertOnce(t *testing.T) {
	ref := serveImage(t, testImage(t))
	cache := t.TempDir()
	before := conversions.Load()
	var wg sync.WaitGroup
	imgs := make([]*Image, 4)
	errs := make([]error, 4)
	for i := range imgs {
		wg.Go(func() {
			imgs[i], errs[i] = Pull(context.Background(), ref, Options{CacheRoot: cache})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("pull %d: %v", i, err)
		}
		if imgs[i].RootFS != imgs[0].RootFS {
			t.Errorf("pull %d: root fs %s, pull 0: %s", i, imgs[i].RootFS, imgs[0].RootFS)
		}
	}
	if n := conversions.Load() - before; n != 1 {
		t.Errorf("%d conversions of one image, want 1", n)
	}
	// And a later pull finds it cached.
	var phases []Phase
	if _, err := Pull(context.Background(), ref, Options{CacheRoot: cache, Progress: func(p Progress) { phases = append(phases, p.Phase) }}); err != nil {
		t.Fatal(err)
	}
	if n := conversions.Load() - before; n != 1 || !reflect.DeepEqual(phases, []Phase{PhaseResolve, PhaseCached}) {
		t.Errorf("cached pull: %d conversions, phases %v", n, phases)
	}
}
