// Package imagetest builds OCI images for tests: tar layers from entries,
// images from layers, an in-process registry to push them to, and OCI
// layouts to write them in. Tests of package image and the end-to-end
// tests of images in VMs share it.
package imagetest

import (
	"archive/tar"
	"bytes"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Entry is one tar entry: a regular file unless Type says otherwise, mode
// 0644 (0755 for a directory) unless Mode is set.
type Entry struct {
	Name, Link, Data string
	Type             byte
	Mode             int64
	UID, GID         int
	Major, Minor     int64
	Xattrs           map[string]string
}

// Epoch is every entry's modification time.
var Epoch = time.Unix(1700000000, 0)

// Tar writes entries as a tar stream, in their order.
func Tar(t testing.TB, entries ...Entry) []byte {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		h := &tar.Header{Name: e.Name, Linkname: e.Link, Typeflag: e.Type, Mode: e.Mode,
			Uid: e.UID, Gid: e.GID, Devmajor: e.Major, Devminor: e.Minor, ModTime: Epoch, Format: tar.FormatPAX}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.Data))
		}
		for k, v := range e.Xattrs {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords["SCHILY.xattr."+k] = v
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("tar header %s: %v", e.Name, err)
		}
		if _, err := io.WriteString(tw, e.Data); err != nil {
			t.Fatalf("tar data %s: %v", e.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// Layer is a gzip-compressed layer of entries.
func Layer(t testing.TB, entries ...Entry) v1.Layer {
	b := Tar(t, entries...)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// Image is an image of layers with cfg, for arch (amd64 when empty).
func Image(t testing.TB, arch string, cfg v1.Config, layers ...v1.Layer) v1.Image {
	if arch == "" {
		arch = "amd64"
	}
	base, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{OS: "linux", Architecture: arch, Config: cfg,
		RootFS: v1.RootFS{Type: "layers"}})
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(base, layers...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// Serve runs an in-process registry behind wrap (nil: none) and returns
// its host:port, on loopback so plain HTTP.
func Serve(t testing.TB, wrap func(http.Handler) http.Handler) string {
	t.Helper()
	var h http.Handler = registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func Push(t testing.TB, ref string, img v1.Image, opts ...remote.Option) {
	t.Helper()
	if err := remote.Write(MustRef(t, ref), img, opts...); err != nil {
		t.Fatalf("Push %s: %v", ref, err)
	}
}

func MustRef(t testing.TB, ref string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// LayoutItem is an image or an index to put in an OCI layout, tagged
// (org.opencontainers.image.ref.name) unless Tag is empty.
type LayoutItem struct {
	Tag   string
	Image v1.Image
	Index v1.ImageIndex
}

// WriteLayout writes an OCI image layout at dir holding items.
func WriteLayout(t testing.TB, dir string, items ...LayoutItem) {
	t.Helper()
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range items {
		var opts []layout.Option
		if it.Tag != "" {
			opts = append(opts, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": it.Tag}))
		}
		if it.Index != nil {
			err = lp.AppendIndex(it.Index, opts...)
		} else {
			err = lp.AppendImage(it.Image, opts...)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}
