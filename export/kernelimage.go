package export

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/stackvm/stack/internal/filenames"
)

// imageEpoch is every file's modification time in the images written
// here, so that the same files always give the same digest.
var imageEpoch = time.Unix(0, 0).UTC()

// ConfigDiskPath is where a config disk image holds the disk: KubeVirt's
// containerDisk takes the file under /disk/.
const ConfigDiskPath = "/disk/stack-config.img"

// WriteKernelImage writes the kernel image that KubeVirt's kernelBoot reads
// (the kernel at KernelPath, the initramfs at InitramfsPath, nothing else)
// as an OCI image layout in dir, tagged tag, and returns the image's
// digest. Push it with any OCI tool (for example `skopeo copy oci:DIR:TAG
// docker://REGISTRY/NAME:TAG`) and name the result with --kernel-image.
func WriteKernelImage(dir, tag, kernel, initramfs string) (string, error) {
	var files []imageFile
	for _, f := range []struct{ src, dst string }{{kernel, KernelPath}, {initramfs, InitramfsPath}} {
		data, err := os.ReadFile(f.src)
		if err != nil {
			return "", fmt.Errorf("read kernel image file: %w", err)
		}
		files = append(files, imageFile{f.dst, data})
	}
	digests, err := writeLayout(dir, map[string][]imageFile{tag: files})
	return digests[tag], err
}

// WriteConfigImages writes each initramfs VM's config disk (Result's
// ConfigDisks) as a containerDisk image tagged with the VM's name, all in
// one OCI image layout in dir, and returns their digests by tag.
func WriteConfigImages(dir string, disks map[string][]byte) (map[string]string, error) {
	images := map[string][]imageFile{}
	for vm, data := range disks {
		images[vm] = []imageFile{{ConfigDiskPath, data}}
	}
	return writeLayout(dir, images)
}

type imageFile struct {
	path string // absolute, in the image
	data []byte
}

// writeLayout writes one single-layer image per tag, of the given files
// (read-only, owned by root, in their directories), as an OCI image layout.
// These are the only functions of the package that do I/O.
func writeLayout(dir string, images map[string][]imageFile) (map[string]string, error) {
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return nil, fmt.Errorf("write image layout %s: %w", dir, err)
	}
	tags := make([]string, 0, len(images))
	for tag := range images {
		tags = append(tags, tag)
	}
	sort.Strings(tags)
	digests := map[string]string{}
	for _, tag := range tags {
		img, err := filesImage(images[tag])
		if err != nil {
			return nil, err
		}
		if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag})); err != nil {
			return nil, fmt.Errorf("write image layout %s: %w", dir, err)
		}
		d, err := img.Digest()
		if err != nil {
			return nil, err
		}
		digests[tag] = d.String()
	}
	return digests, private(dir)
}

// private makes the layout stack's usual 0600 files in 0700 directories
// (the layout writer leaves them open to all).
func private(dir string) error {
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		mode := os.FileMode(0o600)
		switch {
		case err != nil:
			return err
		case d.IsDir():
			mode = filenames.DirMode
		case !d.Type().IsRegular():
			return nil
		}
		if err := os.Chmod(path, mode); err != nil {
			return fmt.Errorf("restrict image layout: %w", err)
		}
		return nil
	})
}

func filesImage(files []imageFile) (v1.Image, error) {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	dirs := map[string]bool{}
	for _, f := range files {
		if d := path.Dir(f.path)[1:] + "/"; !dirs[d] {
			dirs[d] = true
			if err := tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755, ModTime: imageEpoch}); err != nil {
				return nil, err
			}
		}
		h := &tar.Header{Name: f.path[1:], Typeflag: tar.TypeReg, Mode: 0o444, Size: int64(len(f.data)), ModTime: imageEpoch}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b.Bytes())), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("make image layer: %w", err)
	}
	base, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{OS: "linux", Architecture: runtime.GOARCH, RootFS: v1.RootFS{Type: "layers"}})
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(mutate.ConfigMediaType(mutate.MediaType(base, types.OCIManifestSchema1), types.OCIConfigJSON), layer)
	if err != nil {
		return nil, fmt.Errorf("make image: %w", err)
	}
	return img, nil
}
