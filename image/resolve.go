package image

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/internal/fsutil"
)

// Resolved is what a reference names now: the image's identity and
// config, without its layers.
type Resolved struct {
	Ref string // normalized
	// ID is the image's config digest (Image.ID): what a plan compares.
	ID     string
	Config Config
}

// Resolve says which image ref names, reading no layer: from a registry,
// its manifest and config (a few small requests); from a layout or an
// archive, their index. A reference pinned by digest (NAME@sha256:...)
// whose image is in the cache needs no network.
func Resolve(ctx context.Context, ref string, opts Options) (*Resolved, error) {
	r, err := ParseRef(ref)
	if err != nil {
		return nil, err
	}
	cacheRoot := opts.CacheRoot
	if cacheRoot == "" {
		cacheRoot = filenames.CacheRoot()
	}
	if d, ok := pinned(r); ok {
		if b, err := os.ReadFile(filenames.OCIPinned(cacheRoot, d)); err == nil {
			if img, err := Load(cacheRoot, strings.TrimSpace(string(b))); err == nil {
				return &Resolved{Ref: r.String(), ID: img.ID, Config: img.Config}, nil
			}
		}
	}
	src, err := resolve(ctx, r, opts.Transport, cacheRoot)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", r, err)
	}
	rememberPinned(cacheRoot, r, src.id)
	return &Resolved{Ref: r.String(), ID: src.id, Config: configOf(src.config)}, nil
}

// pinned is the digest a registry reference is pinned by, if it is.
func pinned(r Ref) (string, bool) {
	if d, ok := r.Name.(name.Digest); ok && r.Transport == transportRegistry {
		return d.DigestStr(), true
	}
	return "", false
}

// rememberPinned records which image a pinned reference named (best
// effort: without it, the next resolve asks the registry).
func rememberPinned(cacheRoot string, r Ref, id string) {
	d, ok := pinned(r)
	if !ok {
		return
	}
	p := filenames.OCIPinned(cacheRoot, d)
	if err := os.MkdirAll(filepath.Dir(p), filenames.DirMode); err == nil {
		fsutil.WriteFileAtomic(p, []byte(id+"\n"))
	}
}
