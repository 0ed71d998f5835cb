package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/internal/fsutil"
)

// converterVersion is recorded with every converted image: an image that
// an older converter made (another layout or file system) is converted
// again. Bump it whenever the output changes.
const converterVersion = "stack-image/1"

// Options tune Pull.
type Options struct {
	// CacheRoot defaults to filenames.CacheRoot().
	CacheRoot string
	// Progress, when set, is called as the pull advances: at every phase
	// change and, while a layer is read, at most every 100 ms. Calls never
	// overlap, but may come from another goroutine than the caller's.
	Progress func(Progress)
	Logger   *slog.Logger
	// Transport is the HTTP transport to registries; nil means the
	// default. Credentials come from the user's Docker config and its
	// credential helpers either way.
	Transport http.RoundTripper
}

// Phase is a step of a pull.
type Phase string

const (
	PhaseResolve Phase = "resolve"    // reading the manifest and config
	PhaseCached  Phase = "cached"     // the image was converted before
	PhaseLayer   Phase = "layer"      // reading and applying a layer
	PhaseFS      Phase = "filesystem" // writing the file system image
	PhaseDone    Phase = "done"
)

// Progress is a report of a pull under way.
type Progress struct {
	Phase Phase
	Ref   string
	// Layer is the layer being read (from 1) of Layers.
	Layer, Layers int
	// LayerBytes of the layer's LayerSize bytes are read (the blob as
	// stored: compressed); LayerSize is -1 when unknown (an archive).
	LayerBytes, LayerSize int64
	// Bytes of Size are read over every layer; Size is -1 when unknown.
	Bytes, Size int64
}

// Config is what of the image's config a VM runs by.
type Config struct {
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	// Env is KEY=VALUE lines, in the image's order.
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	// User is as the image says: NAME, UID, NAME:GROUP or UID:GID, to be
	// resolved against the image's /etc/passwd and /etc/group.
	User string `json:"user,omitempty"`
	// ExposedPorts are "PORT/PROTO" (5432/tcp), sorted.
	ExposedPorts []string `json:"exposed_ports,omitempty"`
}

// Image is a converted image.
type Image struct {
	// Ref is the reference it was pulled by, normalized (empty from Load).
	Ref string `json:"-"`
	// ID is the digest of the image's config ("sha256:<hex>", Docker's
	// image ID): the same whichever transport brought the image, and the
	// cache key.
	ID string `json:"id"`
	// ManifestDigest is the digest of the linux/amd64 manifest as the
	// registry or layout had it (what NAME@DIGEST pins); empty for an
	// image that came from an archive.
	ManifestDigest string `json:"manifest_digest,omitempty"`
	// Layers are the uncompressed digests of the layers, bottom first.
	Layers []string `json:"layers"`
	// FSType is RootFS's file system type (FSType).
	FSType string `json:"fs_type"`
	Config Config `json:"config"`
	// Converter is the version of the conversion that made RootFS.
	Converter string `json:"converter"`
	// Dir is the image's cache directory, RootFS the root file system
	// image in it, to be attached read-only.
	Dir    string `json:"-"`
	RootFS string `json:"-"`
	// Size is RootFS's size in bytes.
	Size int64 `json:"size"`
}

// conversions counts the conversions this process ran (for tests).
var conversions atomic.Int64

// Pull returns the image ref names as a root file system, fetching and
// converting it unless the cache has it. Errors name the image and say
// why: an unknown image or tag, a refusing registry, no linux/amd64
// variant, a corrupt layer, a layer that writes outside its root.
func Pull(ctx context.Context, ref string, opts Options) (*Image, error) {
	r, err := ParseRef(ref)
	if err != nil {
		return nil, err
	}
	img, err := pull(ctx, r, opts)
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", r, err)
	}
	img.Ref = r.String()
	return img, nil
}

func pull(ctx context.Context, r Ref, opts Options) (*Image, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cacheRoot := opts.CacheRoot
	if cacheRoot == "" {
		cacheRoot = filenames.CacheRoot()
	}
	report := func(p Progress) {
		if opts.Progress != nil {
			p.Ref = r.String()
			opts.Progress(p)
		}
	}
	report(Progress{Phase: PhaseResolve})
	src, err := resolve(ctx, r, opts.Transport, cacheRoot)
	if err != nil {
		return nil, err
	}
	if img, err := Load(cacheRoot, src.id); err == nil {
		rememberPinned(cacheRoot, r, img.ID)
		report(Progress{Phase: PhaseCached, Layers: len(src.layers)})
		return img, nil
	}

	if err := os.MkdirAll(filenames.OCIImages(cacheRoot), filenames.DirMode); err != nil {
		return nil, fmt.Errorf("create image cache: %w", err)
	}
	lock, err := fsutil.LockFile(ctx, filenames.OCIImageLock(cacheRoot, src.id), func() {
		log.Info("waiting for another conversion of the image", "id", src.id)
	})
	if err != nil {
		return nil, fmt.Errorf("lock image cache: %w", err)
	}
	defer lock.Unlock()
	if img, err := Load(cacheRoot, src.id); err == nil {
		report(Progress{Phase: PhaseCached, Layers: len(src.layers)})
		return img, nil // converted while we waited
	}
	start := time.Now()
	img, err := convert(ctx, cacheRoot, src, report)
	if err != nil {
		return nil, err
	}
	rememberPinned(cacheRoot, r, img.ID)
	log.Info("converted image", "ref", r.String(), "id", img.ID, "layers", len(img.Layers),
		"size", img.Size, "took", time.Since(start).Round(time.Millisecond))
	report(Progress{Phase: PhaseDone, Layers: len(src.layers)})
	return img, nil
}

// Load returns the converted image whose config digest is id from the
// cache, or an error wrapping fs.ErrNotExist when it is not there whole,
// or was made by another converter version.
func Load(cacheRoot, id string) (*Image, error) {
	if _, err := v1.NewHash(id); err != nil {
		return nil, fmt.Errorf("load image %q: not a digest: %w", id, err)
	}
	dir := filenames.OCIImage(cacheRoot, id)
	b, err := os.ReadFile(filepath.Join(dir, filenames.OCIImageMeta))
	if err != nil {
		return nil, fmt.Errorf("load image %s: %w", id, err)
	}
	var img Image
	if err := json.Unmarshal(b, &img); err != nil {
		return nil, fmt.Errorf("load image %s: %w", id, err)
	}
	if img.Converter != converterVersion || img.ID != id {
		return nil, fmt.Errorf("load image %s: made by %s, not %s: %w", id, img.Converter, converterVersion, os.ErrNotExist)
	}
	img.Dir = dir
	img.RootFS = filepath.Join(dir, filenames.OCIRootFS)
	return &img, nil
}

// convert builds the image's cache directory. The caller holds the
// image's lock, so whatever a killed conversion of it left is garbage.
func convert(ctx context.Context, cacheRoot string, src *source, report func(Progress)) (*Image, error) {
	conversions.Add(1)
	images := filenames.OCIImages(cacheRoot)
	key := filenames.OCIImageKey(src.id)
	dir := filenames.OCIImage(cacheRoot, src.id)
	leftovers, _ := filepath.Glob(filepath.Join(images, filenames.OCITempPrefix+key+"-*"))
	if _, err := os.Lstat(dir); err == nil {
		leftovers = append(leftovers, dir) // incomplete, or an older converter's
	}
	for _, l := range leftovers {
		if err := os.RemoveAll(l); err != nil {
			return nil, fmt.Errorf("remove stale %s: %w", l, err)
		}
	}
	tmp, err := os.MkdirTemp(images, filenames.OCITempPrefix+key+"-")
	if err != nil {
		return nil, fmt.Errorf("create conversion directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	stage, out, scratch := filepath.Join(tmp, "tree"), filepath.Join(tmp, "image"), filepath.Join(tmp, "scratch")
	for _, d := range []string{stage, out, scratch} {
		if err := os.Mkdir(d, filenames.DirMode); err != nil {
			return nil, fmt.Errorf("create conversion directory: %w", err)
		}
	}
	root, err := os.OpenRoot(stage)
	if err != nil {
		return nil, fmt.Errorf("open staging directory: %w", err)
	}
	defer root.Close()
	t := newTree(root)

	total := int64(0)
	for _, s := range src.sizes {
		if s < 0 || total < 0 {
			total = -1
		} else {
			total += s
		}
	}
	var done int64
	for i := range src.layers {
		p := Progress{Phase: PhaseLayer, Layer: i + 1, Layers: len(src.layers), LayerSize: src.sizes[i], Bytes: done, Size: total}
		report(p)
		n, err := applyLayer(ctx, t, src, i, func(n int64) {
			p.LayerBytes, p.Bytes = n, done+n
			report(p)
		})
		done += n
		if err != nil {
			return nil, fmt.Errorf("layer %d of %d (%s): %w", i+1, len(src.layers), src.diffIDs[i], err)
		}
	}

	report(Progress{Phase: PhaseFS, Layers: len(src.layers), Bytes: done, Size: total})
	rootfs := filepath.Join(out, filenames.OCIRootFS)
	if err := buildExt4(ctx, t, stage, rootfs, scratch, uuidOf(src.id)); err != nil {
		return nil, fmt.Errorf("write root file system: %w", err)
	}
	img := &Image{
		ID: src.id, ManifestDigest: src.manifestDigest, FSType: FSType,
		Config: configOf(src.config), Converter: converterVersion,
	}
	for _, d := range src.diffIDs {
		img.Layers = append(img.Layers, d.String())
	}
	if img.Size, err = syncFile(rootfs); err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(img, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := fsutil.WriteFileAtomic(filepath.Join(out, filenames.OCIImageMeta), append(b, '\n')); err != nil {
		return nil, fmt.Errorf("write image metadata: %w", err)
	}
	if err := os.Rename(out, dir); err != nil {
		return nil, fmt.Errorf("move image into cache: %w", err)
	}
	if err := fsutil.SyncDir(images); err != nil {
		return nil, err
	}
	img.Dir, img.RootFS = dir, filepath.Join(dir, filenames.OCIRootFS)
	return img, nil
}

// applyLayer reads layer i and applies it to t, telling progress how many
// bytes of its blob were read (at most every 100 ms, and at the end). It
// returns the bytes read.
func applyLayer(ctx context.Context, t *tree, src *source, i int, progress func(int64)) (int64, error) {
	rc, err := src.open(i)
	if err != nil {
		return 0, fmt.Errorf("open: %w", err)
	}
	cr := &countingReader{r: rc, report: progress}
	err = t.applyBlob(ctx, cr, src.diffIDs[i].String())
	// A verifying reader reports a digest mismatch of the compressed
	// blob at its end, or on Close.
	if cerr := rc.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("read: %w", cerr)
	}
	progress(cr.n)
	return cr.n, err
}

type countingReader struct {
	r      io.Reader
	n      int64
	last   time.Time
	report func(int64)
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if now := time.Now(); now.Sub(c.last) >= 100*time.Millisecond {
		c.last = now
		c.report(c.n)
	}
	return n, err
}

func configOf(cf *v1.ConfigFile) Config {
	c := cf.Config
	out := Config{Entrypoint: c.Entrypoint, Cmd: c.Cmd, Env: c.Env, WorkingDir: c.WorkingDir, User: c.User}
	for p := range c.ExposedPorts {
		out.ExposedPorts = append(out.ExposedPorts, p)
	}
	sort.Strings(out.ExposedPorts)
	return out
}

// uuidOf derives the file system's UUID from the image ID, so that the
// same image converts to the same UUID.
func uuidOf(id string) string {
	sum := sha256.Sum256([]byte(id))
	x := hex.EncodeToString(sum[:16])
	return x[0:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:32]
}

// syncFile flushes path to disk and returns its size.
func syncFile(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("sync %s: %w", path, err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("sync %s: %w", path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("sync %s: %w", path, err)
	}
	return fi.Size(), nil
}
