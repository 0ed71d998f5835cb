package image

import (
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/stackvm/stack/image/imagetest"
)

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

// The builders of package imagetest, under the names these tests use.
type (
	ent        = imagetest.Entry
	layoutItem = imagetest.LayoutItem
)

var (
	epoch       = imagetest.Epoch
	tarOf       = imagetest.Tar
	layerOf     = imagetest.Layer
	imageOf     = imagetest.Image
	serve       = imagetest.Serve
	push        = imagetest.Push
	mustRef     = imagetest.MustRef
	writeLayout = imagetest.WriteLayout
)
