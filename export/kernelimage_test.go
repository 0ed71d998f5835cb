package export

import (
	"archive/tar"
	"io"
	"os"
	"path/filepath"
	"testing"

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
		idx, err := layout.ImageIndexFromPath(dir)
		if err != nil {
			t.Fatal(err)
		}
		m, err := idx.IndexManifest()
		if err != nil || len(m.Manifests) != 1 || m.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "1" || m.Manifests[0].Digest.String() != d {
			t.Fatalf("index %+v (%v): want one image tagged 1 of digest %s", m, err, d)
		}
		img, err := idx.Image(m.Manifests[0].Digest)
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
		got := map[string]string{}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			data, _ := io.ReadAll(tr)
			got["/"+h.Name] = string(data)
		}
		rc.Close()
		if got[KernelPath] != files["vmlinuz"] || got[InitramfsPath] != files["initramfs"] || len(got) != 3 {
			t.Errorf("layer files %q", got)
		}
	}
	if digests[0] != digests[1] {
		t.Errorf("digests %v: the same files gave different images", digests)
	}
}
