package image

import (
	"bytes"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// layerOf is a gzip-compressed layer of entries.
func layerOf(t testing.TB, entries ...ent) v1.Layer {
	b := tarOf(t, entries...)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// imageOf is an image of layers with cfg, for arch (amd64 when empty).
func imageOf(t testing.TB, arch string, cfg v1.Config, layers ...v1.Layer) v1.Image {
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

// serve runs an in-process registry behind wrap (nil: none) and returns
// its host:port, on loopback so plain HTTP.
func serve(t testing.TB, wrap func(http.Handler) http.Handler) string {
	t.Helper()
	var h http.Handler = registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func push(t testing.TB, ref string, img v1.Image, opts ...remote.Option) {
	t.Helper()
	if err := remote.Write(mustRef(t, ref), img, opts...); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}

func mustRef(t testing.TB, ref string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// isolate keeps the user's Docker config out of a test.
func isolate(t *testing.T) {
	t.Setenv("DOCKER_CONFIG", t.TempDir())
}

// serveImage serves img as HOST/test/app:1 from an in-process registry,
// with the user's Docker config kept out, and returns the reference.
func serveImage(t *testing.T, img v1.Image) string {
	t.Helper()
	isolate(t)
	ref := serve(t, nil) + "/test/app:1"
	push(t, ref, img)
	return ref
}

// layoutItem is an image or an index to put in an OCI layout, tagged
// (org.opencontainers.image.ref.name) unless Tag is empty.
type layoutItem struct {
	Tag   string
	Image v1.Image
	Index v1.ImageIndex
}

// writeLayout writes an OCI image layout at dir holding items.
func writeLayout(t testing.TB, dir string, items ...layoutItem) {
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
