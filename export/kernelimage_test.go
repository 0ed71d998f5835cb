package export

import (
	"archive/tar"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stackvm/stack/guestinit"

	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// TestWriteKernelImage: the layout holds one image, tagged, whose only
// layer has the kernel and initramfs at the paths kernelBoot names, byte
// for byte; the same inputs give the same digest.
func TestWriteKernelImage(t *testing.T) {
	src := t.TempDir()
	files := map[string]string{"vmlinuz": "kernel bytes\x00\x01", "initramfs": "initramfs bytes"}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(src, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var digests []string
	for range 2 {
		dir := filepath.Join(t.TempDir(), "layout")
		d, err := WriteKernelImage(dir, "1", filepath.Join(src, "vmlinuz"), filepath.Join(src, "initramfs"))
		if err != nil {
			t.Fatal(err)
		}
		digests = append(digests, d)
		got := layoutFiles(t, dir, "1", d)
		if fi, err := os.Stat(filepath.Join(dir, "index.json")); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("index.json: mode %v (%v), want 0600", fi.Mode().Perm(), err)
		}
		if got[KernelPath] != files["vmlinuz"] || got[InitramfsPath] != files["initramfs"] || len(got) != 3 {
			t.Errorf("layer files %q", got)
		}
	}
	if digests[0] != digests[1] {
		t.Errorf("digests %v: the same files gave different images", digests)
	}
}

// layoutFiles reads the files of the image tagged tag in the layout in dir,
// by absolute path, and checks the tag's digest (when want is set).
func layoutFiles(t *testing.T, dir, tag, want string) map[string]string {
	t.Helper()
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, desc := range m.Manifests {
		if desc.Annotations["org.opencontainers.image.ref.name"] != tag {
			continue
		}
		if want != "" && desc.Digest.String() != want {
			t.Errorf("tag %s: digest %s, want %s", tag, desc.Digest, want)
		}
		img, err := idx.Image(desc.Digest)
		if err != nil {
			t.Fatal(err)
		}
		layers, err := img.Layers()
		if err != nil || len(layers) != 1 {
			t.Fatalf("layers %d (%v)", len(layers), err)
		}
		rc, err := layers[0].Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		got := map[string]string{}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				return got
			}
			if err != nil {
				t.Fatal(err)
			}
			data, _ := io.ReadAll(tr)
			got["/"+h.Name] = string(data)
		}
	}
	t.Fatalf("no image tagged %s in %s", tag, dir)
	return nil
}

// TestKubeVirtConfigImage: with --config-image, an initramfs VM's guest
// config is a containerDisk whose disk is the config disk stack boots the
// VM with (the guest config, zero-padded), and no ConfigMap is written.
func TestKubeVirtConfigImage(t *testing.T) {
	in := example(t, "quickstart.hcl")
	r, err := KubeVirt(in, KubeVirtOptions{ConfigImage: "registry.example/stack/quickstart-config"})
	if err != nil {
		t.Fatal(err)
	}
	d := decodeStrict(t, r)
	if len(d.configMaps) != 0 || hasWarning(r, "vm.web", "ISO 9660") {
		t.Errorf("ConfigMaps %v or the ISO warning despite --config-image", d.configMaps)
	}
	dir := filepath.Join(t.TempDir(), "layout")
	digests, err := WriteConfigImages(dir, r.ConfigDisks)
	if err != nil {
		t.Fatal(err)
	}
	g := in.guest()
	for _, vm := range in.Stack.VMs {
		var image string
		for _, v := range d.vms[vm.Name].Spec.Template.Spec.Volumes {
			if v.Name == "stack-config" && v.ContainerDisk != nil {
				image = v.ContainerDisk.Image
			}
		}
		if image != "registry.example/stack/quickstart-config:"+vm.Name {
			t.Errorf("%s: config volume image %q", vm.Name, image)
		}
		raw, err := json.Marshal(g.Config(vm, vm.Command, vm.Env, nil, false))
		if err != nil {
			t.Fatal(err)
		}
		disk := layoutFiles(t, dir, vm.Name, digests[vm.Name])[ConfigDiskPath]
		if len(disk)%512 != 0 || strings.TrimRight(disk, "\x00") != string(raw) {
			t.Errorf("%s: config disk in the image (%d bytes) is not the zero-padded guest config", vm.Name, len(disk))
		}
		if _, err := guestinit.ParseConfig([]byte(disk)); err != nil {
			t.Errorf("%s: the guest init refuses the config disk: %v", vm.Name, err)
		}
	}
}
