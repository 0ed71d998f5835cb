package app

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/stackvm/stack/image/imagetest"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/state"
)

// TestImageExample boots examples/stacks/image.hcl with the example image
// built as an OCI layout from this machine's files (a Debian-packaged
// static busybox, a shell script as entrypoint serving HTTP as user www):
// web is ready when its port listens, client reaches it by name, and exec
// runs inside the image as its user, in its working directory.
func TestImageExample(t *testing.T) {
	requireVMs(t)
	layout := filepath.Join(t.TempDir(), "web-oci")
	build := exec.Command("go", "run", "../../../examples/images/web", layout)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the example image: %v\n%s", err, out)
	}
	file, err := filepath.Abs("../../../examples/stacks/image.hcl")
	if err != nil {
		t.Fatal(err)
	}
	c := newCLI(t, fmt.Sprintf("img-%d", os.Getpid()))
	args := []string{"-f", file, "--var", "image=oci:" + layout + ":web"}
	plan := c.mustRun(append(args, "plan")...).stdout
	if !strings.Contains(plan, "image_id") || !strings.Contains(plan, "sha256:") || !strings.Contains(plan, "8080/tcp") {
		t.Errorf("the plan does not show the image's digest and exposed port:\n%s", plan)
	}
	c.mustRun(append(args, "up", "--progress", "plain")...)
	if ps := c.ps(); ps["web"].State != "ready" {
		t.Fatalf("web: %+v", ps["web"])
	}
	if out := c.mustRun("exec", "client", "--", "wget", "-q", "-O", "-", "http://web:8080/").stdout; !strings.Contains(out, "hello from web, served by www") {
		t.Errorf("client fetched %q", out)
	}
	if out := c.mustRun("exec", "web", "--", "sh", "-c", "id -un; pwd; cat /etc/hostname").stdout; out != "www\n/srv\nweb\n" {
		t.Errorf("exec in web (user, directory, hostname): %q", out)
	}
	c.mustRun(append(args, "down")...)
}

// featureImage is an image of two layers with what a conversion must keep
// and drop: a whiteout, an opaque directory, a hard link, a symlink, a file
// of a non-root user, and a config with an environment, a working
// directory and a user.
func featureImage(t *testing.T) v1.Image {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	base := imagetest.Layer(t,
		imagetest.Entry{Name: "bin/", Type: tar.TypeDir},
		imagetest.Entry{Name: "bin/busybox", Mode: 0o755, Data: string(bb)},
		imagetest.Entry{Name: "bin/sh", Type: tar.TypeSymlink, Link: "busybox"},
		imagetest.Entry{Name: "etc/", Type: tar.TypeDir},
		imagetest.Entry{Name: "etc/passwd", Data: "root:x:0:0::/root:/bin/sh\nu:x:1000:1000::/home/u:/bin/sh\n"},
		imagetest.Entry{Name: "etc/group", Data: "root:x:0:\nu:x:1000:\n"},
		imagetest.Entry{Name: "a/", Type: tar.TypeDir},
		imagetest.Entry{Name: "a/keep", Data: "kept"},
		imagetest.Entry{Name: "a/gone", Data: "whited out"},
		imagetest.Entry{Name: "opq/", Type: tar.TypeDir},
		imagetest.Entry{Name: "opq/old", Data: "hidden by the opaque directory"},
		imagetest.Entry{Name: "data/", Type: tar.TypeDir},
		imagetest.Entry{Name: "data/hard", Data: "linked"},
	)
	top := imagetest.Layer(t,
		imagetest.Entry{Name: "a/.wh.gone"},
		imagetest.Entry{Name: "opq/", Type: tar.TypeDir},
		imagetest.Entry{Name: "opq/.wh..wh..opq"},
		imagetest.Entry{Name: "opq/new", Data: "new"},
		imagetest.Entry{Name: "data/hard2", Type: tar.TypeLink, Link: "data/hard"},
		imagetest.Entry{Name: "link", Type: tar.TypeSymlink, Link: "/a/keep"},
		imagetest.Entry{Name: "var/", Type: tar.TypeDir},
		imagetest.Entry{Name: "var/data", Type: tar.TypeSymlink, Link: "/srv/data"},
		imagetest.Entry{Name: "home/", Type: tar.TypeDir},
		imagetest.Entry{Name: "home/u/", Type: tar.TypeDir, UID: 1000, GID: 1000},
		imagetest.Entry{Name: "home/u/owned", UID: 1000, GID: 1000, Mode: 0o600, Data: "mine"},
	)
	return imagetest.Image(t, "", v1.Config{
		Cmd:        []string{"/bin/sh", "-c", "exec /bin/busybox sleep 100000"},
		Env:        []string{"PATH=/bin", "FOO=bar"},
		WorkingDir: "/home/u",
		User:       "u",
	}, base, top)
}

const threeImageVMs = `network "lan" {
  subnet = "10.73.0.0/24"
}

vm "reg" {
  image = "%s"
  network "lan" {}
  disk "data" {
    size       = "64MiB"
    guest_path = "/var/data"
  }
  shared_dir "share" {
    host_path  = "%s"
    guest_path = "/share"
    read_only  = true
  }
}

vm "lay" {
  image = "%s"
  network "lan" {}
}

vm "arc" {
  image = "%s"
  network "lan" {}
}
`

// TestImageFeatures: one image from an in-process registry, an OCI layout
// and a docker-archive tarball boots as three VMs of one image ID; inside
// each, the layers merged as the image says and the process runs with its
// environment, directory and user. A disk and a shared directory mount at
// their paths inside the image, through the image's own symbolic links. An unknown tag fails up, naming the VM
// and the image.
func TestImageFeatures(t *testing.T) {
	requireVMs(t)
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	img := featureImage(t)
	host := imagetest.Serve(t, nil)
	regRef := host + "/test/app:1"
	imagetest.Push(t, regRef, img)
	layoutDir := filepath.Join(t.TempDir(), "layout")
	imagetest.WriteLayout(t, layoutDir, imagetest.LayoutItem{Tag: "app", Image: img})
	archive := filepath.Join(t.TempDir(), "app.tar")
	if err := tarball.WriteToFile(archive, imagetest.MustRef(t, "test/app:1"), img); err != nil {
		t.Fatal(err)
	}
	share := t.TempDir()
	writeFile(t, filepath.Join(share, "hello"), "shared\n")
	file := filepath.Join(t.TempDir(), "stack.hcl")
	writeFile(t, file, fmt.Sprintf(threeImageVMs, regRef, share, "oci:"+layoutDir+":app", "docker-archive:"+archive))
	c := newCLI(t, fmt.Sprintf("imgf-%d", os.Getpid()))
	c.mustRun("-f", file, "up", "--progress", "plain")

	b, err := os.ReadFile(filepath.Join(filenames.NamespaceState(c.stateDir, c.ns), filenames.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	var st state.State
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, v := range st.VMs {
		ids[string(v.Attributes["image_id"])] = true
	}
	if want, _ := img.ConfigName(); len(ids) != 1 || !ids[`"`+want.String()+`"`] {
		t.Errorf("image IDs of the three VMs: %v, want %s for all", ids, want)
	}
	check := `ls /a; ls /opq; [ $(stat -c %i /data/hard) = $(stat -c %i /data/hard2) ] && echo hardlink; ` +
		`readlink /link; cat /link; echo; stat -c %u /home/u/owned; id -u; pwd; echo $FOO`
	want := "keep\nnew\nhardlink\n/a/keep\nkept\n1000\n1000\n/home/u\nbar\n"
	for _, vm := range []string{"reg", "lay", "arc"} {
		if out := c.mustRun("exec", vm, "--", "sh", "-c", check).stdout; out != want {
			t.Errorf("%s sees:\n%s\nwant:\n%s", vm, out, want)
		}
	}
	mounts := `awk '$2=="/srv/data"{print $3}' /proc/mounts; cat /share/hello; touch /share/x 2>/dev/null || echo read-only`
	if out := c.mustRun("exec", "reg", "--", "sh", "-c", mounts).stdout; out != "ext4\nshared\nread-only\n" {
		t.Errorf("reg's disk at /var/data (a link to /srv/data) and share at /share: %q", out)
	}
	c.mustRun("down")

	writeFile(t, file, fmt.Sprintf(`vm "missing" {
  image = "%s/test/app:nope"
}
`, host))
	if r := c.run("-f", file, "up"); r.code == 0 || !strings.Contains(r.stderr, "vm.missing") || !strings.Contains(r.stderr, "app:nope") {
		t.Errorf("up with an unknown tag: %+v", r)
	}
}
