package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/stackvm/stack/internal/decompress"
	"github.com/stackvm/stack/internal/filenames"
)

// Transports of a reference, as skopeo spells them.
const (
	transportRegistry = "docker"
	transportLayout   = "oci"
	transportArchive  = "docker-archive"
)

// Ref is a parsed image reference.
type Ref struct {
	// Transport is "docker" (a registry), "oci" (an OCI image layout
	// directory) or "docker-archive" (a `docker save` tarball).
	Transport string
	// Name is the registry reference, fully qualified (docker.io/library/
	// alpine:latest), for the docker transport.
	Name name.Reference
	// Path and Tag locate the image in a layout or an archive; Tag is
	// empty when the layout holds one image.
	Path, Tag string
}

func (r Ref) String() string {
	switch r.Transport {
	case transportLayout:
		if r.Tag != "" {
			return "oci:" + r.Path + ":" + r.Tag
		}
		return "oci:" + r.Path
	case transportArchive:
		return "docker-archive:" + r.Path
	}
	return r.Name.Name()
}

// ParseRef parses an image reference:
//
//	NAME[:TAG|@DIGEST]        an image in a registry (docker://NAME too);
//	                          Docker Hub and library/ by default, as Docker
//	oci:PATH[:TAG]            an OCI image layout directory
//	docker-archive:PATH       a `docker save` tarball holding one image
//
// A registry on localhost or a loopback address is spoken to over plain
// HTTP; every other one over HTTPS.
func ParseRef(s string) (Ref, error) {
	switch {
	case strings.HasPrefix(s, "oci:"):
		p, tag, _ := strings.Cut(strings.TrimPrefix(s, "oci:"), ":")
		if p == "" {
			return Ref{}, fmt.Errorf("parse image reference %q: oci: needs a directory", s)
		}
		return Ref{Transport: transportLayout, Path: p, Tag: tag}, nil
	case strings.HasPrefix(s, "docker-archive:"):
		p := strings.TrimPrefix(s, "docker-archive:")
		if p == "" {
			return Ref{}, fmt.Errorf("parse image reference %q: docker-archive: needs a file", s)
		}
		return Ref{Transport: transportArchive, Path: p}, nil
	}
	ref := strings.TrimPrefix(s, "docker://")
	var opts []name.Option
	if isLoopback(ref) {
		opts = append(opts, name.Insecure)
	}
	n, err := name.ParseReference(ref, opts...)
	if err != nil {
		return Ref{}, fmt.Errorf("parse image reference %q: %w", s, err)
	}
	return Ref{Transport: transportRegistry, Name: n}, nil
}

// isLoopback reports whether a registry reference names localhost or a
// loopback address (with or without a port) as its registry.
func isLoopback(ref string) bool {
	host, _, _ := strings.Cut(ref, "/")
	if !strings.Contains(ref, "/") {
		return false // a Docker Hub name
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

// platform is the only one the guest runs.
var platform = v1.Platform{OS: "linux", Architecture: "amd64"}

// source is an image resolved to one platform: its identity, config and
// layers, whatever the transport.
type source struct {
	img v1.Image
	// id is the digest of the config ("sha256:<hex>"): it names the
	// layers' uncompressed digests, so it determines the root file system,
	// and it is the same through every transport.
	id string
	// manifestDigest is the registry's or the layout's manifest digest;
	// empty for an archive, whose manifest stack would have to compress
	// every layer to compute.
	manifestDigest string
	rawConfig      []byte
	config         *v1.ConfigFile
	layers         []v1.Layer
	diffIDs        []v1.Hash
	// sizes are the layer blobs' sizes as read (compressed), -1 unknown.
	sizes []int64
	// compressed says whether to read each layer's stored blob (whose
	// compression applyBlob detects) rather than have the library
	// uncompress it.
	compressed bool
}

// resolve opens the image ref names and picks its linux/amd64 variant. A
// docker archive compressed as a whole (docker save | gzip) is read from
// its decompressed copy under cacheRoot.
func resolve(ctx context.Context, ref Ref, transportRT http.RoundTripper, cacheRoot string) (*source, error) {
	var (
		img v1.Image
		err error
		s   = &source{compressed: true}
	)
	switch ref.Transport {
	case transportRegistry:
		opts := []remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)}
		if transportRT != nil {
			opts = append(opts, remote.WithTransport(transportRT))
		}
		desc, err := remote.Get(ref.Name, opts...)
		if err != nil {
			return nil, registryError(ref, err)
		}
		if desc.MediaType.IsIndex() {
			idx, err := desc.ImageIndex()
			if err != nil {
				return nil, registryError(ref, err)
			}
			img, err = pickPlatform(idx)
			if err != nil {
				return nil, err
			}
		} else if img, err = desc.Image(); err != nil {
			return nil, registryError(ref, err)
		}
	case transportLayout:
		idx, err := layout.ImageIndexFromPath(ref.Path)
		if err != nil {
			return nil, fmt.Errorf("open OCI layout %s: %w", ref.Path, err)
		}
		if img, err = pickLayout(idx, ref); err != nil {
			return nil, err
		}
	case transportArchive:
		if _, err := os.Stat(ref.Path); err != nil {
			return nil, fmt.Errorf("open docker archive: %w", err)
		}
		path, err := decompress.Cached(ctx, ref.Path, filenames.ArchiveCache(cacheRoot))
		if err != nil {
			return nil, fmt.Errorf("open docker archive: %w", err)
		}
		if img, err = tarball.ImageFromPath(path, nil); err != nil {
			return nil, fmt.Errorf("open docker archive %s: %w", ref.Path, err)
		}
		// Its layers are usually stored uncompressed; the library would
		// gzip them to produce "compressed" blobs.
		s.compressed = false
	default:
		return nil, fmt.Errorf("unknown transport %q", ref.Transport)
	}
	s.img = img
	if s.rawConfig, err = img.RawConfigFile(); err != nil {
		return nil, fmt.Errorf("read image config: %w", registryError(ref, err))
	}
	sum := sha256.Sum256(s.rawConfig)
	s.id = "sha256:" + hex.EncodeToString(sum[:])
	if ref.Transport != transportArchive {
		m, err := img.Manifest()
		if err != nil {
			return nil, fmt.Errorf("read image manifest: %w", registryError(ref, err))
		}
		if m.Config.Digest.String() != s.id {
			return nil, fmt.Errorf("image config does not match its digest %s (got %s)", m.Config.Digest, s.id)
		}
		d, err := img.Digest()
		if err != nil {
			return nil, fmt.Errorf("read image manifest: %w", err)
		}
		s.manifestDigest = d.String()
	}
	if s.config, err = v1.ParseConfigFile(strings.NewReader(string(s.rawConfig))); err != nil {
		return nil, fmt.Errorf("parse image config: %w", err)
	}
	if s.config.OS != platform.OS || s.config.Architecture != platform.Architecture {
		return nil, fmt.Errorf("image is %s/%s, and VMs run %s/%s", s.config.OS, s.config.Architecture, platform.OS, platform.Architecture)
	}
	if s.layers, err = img.Layers(); err != nil {
		return nil, fmt.Errorf("list layers: %w", registryError(ref, err))
	}
	s.diffIDs = s.config.RootFS.DiffIDs
	if len(s.diffIDs) != len(s.layers) {
		return nil, fmt.Errorf("image config names %d layers, the manifest %d", len(s.diffIDs), len(s.layers))
	}
	for _, l := range s.layers {
		size := int64(-1)
		if s.compressed {
			if size, err = l.Size(); err != nil {
				size = -1
			}
		}
		s.sizes = append(s.sizes, size)
	}
	return s, nil
}

// open returns layer i's blob as stored (compressed) or uncompressed.
func (s *source) open(i int) (io.ReadCloser, error) {
	if s.compressed {
		return s.layers[i].Compressed()
	}
	return s.layers[i].Uncompressed()
}

// pickPlatform selects linux/amd64 from an index; an index without it is
// an error that lists what it has.
func pickPlatform(idx v1.ImageIndex) (v1.Image, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("read image index: %w", err)
	}
	var have []string
	for _, d := range im.Manifests {
		if d.Platform == nil {
			continue
		}
		if d.Platform.OS == platform.OS && d.Platform.Architecture == platform.Architecture {
			if d.MediaType.IsIndex() {
				child, err := idx.ImageIndex(d.Digest)
				if err != nil {
					return nil, fmt.Errorf("read image index: %w", err)
				}
				return pickPlatform(child)
			}
			return idx.Image(d.Digest)
		}
		if d.Platform.OS != "unknown" { // attestation manifests
			have = append(have, d.Platform.OS+"/"+d.Platform.Architecture)
		}
	}
	if len(have) == 0 {
		return nil, fmt.Errorf("image index has no %s/%s image", platform.OS, platform.Architecture)
	}
	return nil, fmt.Errorf("image has no %s/%s variant (it has %s)", platform.OS, platform.Architecture, strings.Join(have, ", "))
}

// pickLayout selects the image of an OCI layout: the one tagged ref.Tag
// (annotation org.opencontainers.image.ref.name), else its only one.
func pickLayout(idx v1.ImageIndex, ref Ref) (v1.Image, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("read OCI layout %s: %w", ref.Path, err)
	}
	var found []v1.Descriptor
	var tags []string
	for _, d := range im.Manifests {
		tag := d.Annotations["org.opencontainers.image.ref.name"]
		if tag != "" {
			tags = append(tags, tag)
		}
		if ref.Tag == "" || tag == ref.Tag {
			found = append(found, d)
		}
	}
	switch {
	case len(found) == 0 && ref.Tag != "":
		return nil, fmt.Errorf("OCI layout %s has no image tagged %q (it has %s)", ref.Path, ref.Tag, strings.Join(tags, ", "))
	case len(found) == 0:
		return nil, fmt.Errorf("OCI layout %s holds no image", ref.Path)
	case len(found) > 1:
		return nil, fmt.Errorf("OCI layout %s holds %d images: name one as oci:%s:TAG", ref.Path, len(found), ref.Path)
	}
	d := found[0]
	if d.MediaType.IsIndex() {
		child, err := idx.ImageIndex(d.Digest)
		if err != nil {
			return nil, fmt.Errorf("read OCI layout %s: %w", ref.Path, err)
		}
		return pickPlatform(child)
	}
	return idx.Image(d.Digest)
}

// registryError turns a registry's refusal into words: which image, and
// what the registry said.
func registryError(ref Ref, err error) error {
	var te *transport.Error
	if ref.Transport != transportRegistry || !errors.As(err, &te) {
		return err
	}
	has := func(code transport.ErrorCode) bool {
		for _, d := range te.Errors {
			if d.Code == code {
				return true
			}
		}
		return false
	}
	reg := ref.Name.Context().RegistryStr()
	switch {
	case has(transport.BlobUnknownErrorCode):
		return fmt.Errorf("registry %s lacks a blob of image %s: %w", reg, ref.Name.Context().RepositoryStr(), err)
	case has(transport.NameUnknownErrorCode):
		return fmt.Errorf("no such image %s in registry %s", ref.Name.Context().RepositoryStr(), reg)
	case has(transport.ManifestUnknownErrorCode), te.StatusCode == http.StatusNotFound:
		return fmt.Errorf("no such tag or digest %q of %s in registry %s", ref.Name.Identifier(), ref.Name.Context().RepositoryStr(), reg)
	case te.StatusCode == http.StatusUnauthorized, te.StatusCode == http.StatusForbidden,
		has(transport.UnauthorizedErrorCode), has(transport.DeniedErrorCode):
		return fmt.Errorf("registry %s refused access (HTTP %d): the image does not exist or needs credentials (docker login %s): %w", reg, te.StatusCode, reg, err)
	}
	return fmt.Errorf("registry %s: %w", reg, err)
}
