package image

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
)

// failingTransport is a registry that cannot be reached.
type failingTransport struct{}

func (failingTransport) RoundTrip(*http.Request) (*http.Response, error) {
	return nil, errors.New("network is down")
}

// Resolve names an image by its config digest and config without reading
// its layers; a reference pinned by digest whose image was pulled needs no
// network.
func TestResolve(t *testing.T) {
	img := testImage(t)
	ref := serveImage(t, img)
	cache := t.TempDir()
	wantID, _ := img.ConfigName()

	r, err := Resolve(context.Background(), ref, Options{CacheRoot: cache})
	if err != nil {
		t.Fatal(err)
	}
	if r.ID != wantID.String() || r.Config.WorkingDir == "" {
		t.Errorf("resolved %+v, want ID %s and the image's config", r, wantID)
	}

	d, _ := img.Digest()
	pinnedRef := strings.SplitN(ref, ":1", 2)[0] + "@" + d.String()
	if _, err := Resolve(context.Background(), pinnedRef, Options{CacheRoot: cache, Transport: failingTransport{}}); err == nil {
		t.Fatal("a pinned reference whose image is not pulled resolved without the network")
	}
	if _, err := Pull(context.Background(), pinnedRef, Options{CacheRoot: cache}); err != nil {
		t.Fatal(err)
	}
	r, err = Resolve(context.Background(), pinnedRef, Options{CacheRoot: cache, Transport: failingTransport{}})
	if err != nil {
		t.Fatalf("a pulled pinned reference needs the network: %v", err)
	}
	if r.ID != wantID.String() {
		t.Errorf("pinned resolve: %s, want %s", r.ID, wantID)
	}
}
