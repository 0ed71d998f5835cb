package stack

import (
	"context"
	"log/slog"

	"github.com/stackvm/stack/image"
)

// PullOptions tune Pull.
type PullOptions struct {
	// CacheDir is where converted images are kept; default
	// $STACK_CACHE_DIR, else $XDG_CACHE_HOME/stack.
	CacheDir string
	// Progress, when set, is told how the pull advances (one call at a
	// time, not always from the calling goroutine).
	Progress func(PullProgress)
	Logger   *slog.Logger
}

// PullProgress is a report of a pull under way.
type PullProgress = image.Progress

// Pull fetches the OCI image ref names (NAME[:TAG|@DIGEST] from a
// registry, oci:PATH[:TAG], docker-archive:PATH) and converts its
// linux/amd64 variant into a root file system image, unless the cache
// already has it (by the digest of the image's config). See docs/images.md.
func Pull(ctx context.Context, ref string, opts PullOptions) (*image.Image, error) {
	return image.Pull(ctx, ref, image.Options{CacheRoot: opts.CacheDir, Progress: opts.Progress, Logger: opts.Logger})
}
