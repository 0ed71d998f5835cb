package export

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// kernelImageEpoch is every file's modification time in a kernel image, so
// that the same kernel and initramfs always give the same digest.
var kernelImageEpoch = time.Unix(0, 0).UTC()

// WriteKernelImage writes the kernel image that KubeVirt's kernelBoot reads
// (the kernel at KernelPath, the initramfs at InitramfsPath, nothing else)
// as an OCI image layout in dir, tagged tag, and returns the image's
// digest. It is the package's one function that does I/O: it reads the two
// files and writes the layout. Push it with any OCI tool (for example
// `skopeo copy oci:DIR:TAG docker://REGISTRY/NAME:TAG`) and name the result
// with --kernel-image.
func WriteKernelImage(dir, tag, kernel, initramfs string) (string, error) {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	if err := tw.WriteHeader(&tar.Header{Name: path.Dir(KernelPath)[1:] + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: kernelImageEpoch}); err != nil {
		return "", err
	}
	for _, f := range []struct{ src, dst string }{{kernel, KernelPath}, {initramfs, InitramfsPath}} {
		data, err := os.ReadFile(f.src)
		if err != nil {
			return "", fmt.Errorf("read kernel image file: %w", err)
		}
		h := &tar.Header{Name: f.dst[1:], Typeflag: tar.TypeReg, Mode: 0o444, Size: int64(len(data)), ModTime: kernelImageEpoch}
		if err := tw.WriteHeader(h); err != nil {
			return "", err
		}
		if _, err := tw.Write(data); err != nil {
			return "", err
		}
	}
	if err := tw.Close(); err != nil {
		return "", err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b.Bytes())), nil })
	if err != nil {
		return "", fmt.Errorf("make kernel image layer: %w", err)
	}
	base, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{OS: "linux", Architecture: runtime.GOARCH, RootFS: v1.RootFS{Type: "layers"}})
	if err != nil {
		return "", err
	}
	img, err := mutate.AppendLayers(base, layer)
	if err != nil {
		return "", fmt.Errorf("make kernel image: %w", err)
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return "", fmt.Errorf("write kernel image layout %s: %w", dir, err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag})); err != nil {
		return "", fmt.Errorf("write kernel image layout %s: %w", dir, err)
	}
	d, err := img.Digest()
	if err != nil {
		return "", err
	}
	return d.String(), nil
}
