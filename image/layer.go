package image

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
)

// OCI whiteouts (image-spec layer.md): ".wh.<name>" hides <name> of the
// lower layers, ".wh..wh..opq" hides every lower entry of its directory.
// Other ".wh..wh." names are aufs bookkeeping and are dropped.
const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// inode is what a file system inode carries, shared by the hard links of
// one file. Staged regular files, directories and symlinks have their data
// in the staging tree; devices and FIFOs exist only here.
type inode struct {
	typ          byte  // tar.TypeDir, TypeReg, TypeSymlink, TypeChar, TypeBlock, TypeFifo
	mode         int64 // permission bits with setuid, setgid and sticky (07777)
	uid, gid     int
	major, minor int64
	size         int64
	mtime        time.Time
	xattrs       map[string]string
}

// node is one name in the merged tree.
type node struct {
	ino      *inode
	children map[string]*node // directories only
	// layer is the last layer that created or mentioned this name (a
	// descendant's entry mentions its ancestors): whiteouts only hide
	// what lower layers made.
	layer int
}

// tree is the merged root file system of the layers applied so far: the
// metadata in memory, the data of regular files, directories and symlinks
// staged on disk under root. Every write to the staging directory goes
// through an os.Root, which refuses to leave it, and the tree refuses entry
// paths that pass through a symlink or "..", so no layer reaches outside
// the staging directory, not even through a symlink of an earlier layer.
type tree struct {
	root  *os.Root
	top   *node
	layer int // the layer being applied, from 1
}

// stagedDirPerm and stagedFilePerm are or-ed into the staged permissions so
// that the builder can always read what it stages; the image's real modes
// are set in the file system image afterwards.
const (
	stagedDirPerm  = 0o700
	stagedFilePerm = 0o600
)

func newTree(root *os.Root) *tree {
	return &tree{root: root, top: &node{
		ino:      &inode{typ: tar.TypeDir, mode: 0o755},
		children: map[string]*node{},
	}}
}

// errLayer is a layer's content that stack refuses; the message names the
// entry and the reason.
type errLayer struct {
	entry, reason string
}

func (e *errLayer) Error() string { return fmt.Sprintf("entry %q: %s", e.entry, e.reason) }

// cleanEntryPath validates a tar entry path and returns it relative to the
// root ("" for the root itself). Absolute paths and ".." elements are
// refused rather than cleaned away: no image builder writes them, and an
// entry that names its way out of the root is an attack.
func cleanEntryPath(name string) (string, error) {
	if strings.HasPrefix(name, "/") {
		return "", &errLayer{name, "absolute path"}
	}
	if strings.IndexByte(name, 0) >= 0 {
		return "", &errLayer{name, "NUL byte in path"}
	}
	for _, el := range strings.Split(name, "/") {
		if el == ".." {
			return "", &errLayer{name, `path escapes the root ("..")`}
		}
	}
	p := path.Clean(name)
	if p == "." {
		return "", nil
	}
	return p, nil
}

// lookup returns the node at p ("" is the root) and nil when there is none.
// A symlink or non-directory on the way is an error: entries are never
// resolved through symlinks.
func (t *tree) lookup(entry, p string) (*node, error) {
	n := t.top
	if p == "" {
		return n, nil
	}
	els := strings.Split(p, "/")
	for i, el := range els {
		if i > 0 {
			switch n.ino.typ {
			case tar.TypeDir:
			case tar.TypeSymlink:
				return nil, &errLayer{entry, fmt.Sprintf("path goes through symlink %q", strings.Join(els[:i], "/"))}
			default:
				return nil, &errLayer{entry, fmt.Sprintf("%q is not a directory", strings.Join(els[:i], "/"))}
			}
		}
		c, ok := n.children[el]
		if !ok {
			return nil, nil
		}
		n = c
	}
	return n, nil
}

// parent returns the directory that holds p, creating missing directories
// (0755, root-owned, as Docker does) in the tree and the staging directory,
// and marks every directory on the way as mentioned by this layer.
func (t *tree) parent(entry, p string) (*node, string, error) {
	dir, base := path.Split(p)
	dir = strings.TrimSuffix(dir, "/")
	n := t.top
	n.layer = t.layer
	if dir == "" {
		return n, base, nil
	}
	els := strings.Split(dir, "/")
	for i, el := range els {
		c, ok := n.children[el]
		sofar := strings.Join(els[:i+1], "/")
		switch {
		case !ok:
			if err := t.root.Mkdir(sofar, 0o755|stagedDirPerm); err != nil {
				return nil, "", fmt.Errorf("create %s: %w", sofar, err)
			}
			c = &node{ino: &inode{typ: tar.TypeDir, mode: 0o755}, children: map[string]*node{}}
			n.children[el] = c
		case c.ino.typ == tar.TypeSymlink:
			return nil, "", &errLayer{entry, fmt.Sprintf("path goes through symlink %q", sofar)}
		case c.ino.typ != tar.TypeDir:
			return nil, "", &errLayer{entry, fmt.Sprintf("%q is not a directory", sofar)}
		}
		c.layer = t.layer
		n = c
	}
	return n, base, nil
}

// remove deletes p from the tree and the staging directory.
func (t *tree) remove(parent *node, name, p string) error {
	c := parent.children[name]
	if c == nil {
		return nil
	}
	delete(parent.children, name)
	if !staged(c.ino.typ) {
		return nil
	}
	if err := t.root.RemoveAll(p); err != nil {
		return fmt.Errorf("remove %s: %w", p, err)
	}
	return nil
}

// hideLower removes what lower layers left under the directory n (at p),
// keeping what this layer made: an opaque directory, or the whiteout of a
// directory this layer also writes to.
func (t *tree) hideLower(n *node, p string) error {
	for _, name := range sortedNames(n.children) {
		c := n.children[name]
		cp := path.Join(p, name)
		if c.layer != t.layer {
			if err := t.remove(n, name, cp); err != nil {
				return err
			}
			continue
		}
		if c.ino.typ == tar.TypeDir {
			if err := t.hideLower(c, cp); err != nil {
				return err
			}
		}
	}
	return nil
}

func staged(typ byte) bool {
	return typ == tar.TypeDir || typ == tar.TypeReg || typ == tar.TypeSymlink
}

// apply applies one layer's tar stream on top of the tree. It returns an
// *errLayer for content it refuses and stops at the first problem; the
// staging directory is then to be thrown away.
func (t *tree) apply(ctx context.Context, r io.Reader) error {
	t.layer++
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read layer: %w", err)
		}
		if err := t.entry(hdr, tr); err != nil {
			return err
		}
	}
}

func (t *tree) entry(hdr *tar.Header, data io.Reader) error {
	p, err := cleanEntryPath(hdr.Name)
	if err != nil {
		return err
	}
	if p == "" {
		if hdr.Typeflag != tar.TypeDir {
			return &errLayer{hdr.Name, "the root is not a directory"}
		}
		t.top.ino = inodeOf(hdr)
		t.top.layer = t.layer
		return t.root.Chmod(".", stagedPerm(t.top.ino))
	}
	dir, name, err := t.parent(hdr.Name, p)
	if err != nil {
		return err
	}
	if strings.HasPrefix(name, whiteoutPrefix) {
		return t.whiteout(hdr.Name, dir, path.Dir(p), name)
	}
	old := dir.children[name]
	if hdr.Typeflag == tar.TypeDir && old != nil && old.ino.typ == tar.TypeDir {
		// A directory over a directory merges: only its metadata changes.
		old.ino = inodeOf(hdr)
		old.layer = t.layer
		return t.root.Chmod(p, stagedPerm(old.ino))
	}
	if err := t.remove(dir, name, p); err != nil {
		return err
	}
	n := &node{ino: inodeOf(hdr), layer: t.layer}
	switch hdr.Typeflag {
	case tar.TypeDir:
		n.children = map[string]*node{}
		if err := t.root.Mkdir(p, stagedPerm(n.ino)); err != nil {
			return fmt.Errorf("create %s: %w", p, err)
		}
	case tar.TypeReg, tar.TypeRegA, tar.TypeCont:
		n.ino.typ = tar.TypeReg
		if err := t.writeFile(p, stagedPerm(n.ino), data, hdr.Size); err != nil {
			return err
		}
		// mkfs.ext4 -d copies the staged file's times.
		if !n.ino.mtime.IsZero() {
			if err := t.root.Chtimes(p, n.ino.mtime, n.ino.mtime); err != nil {
				return fmt.Errorf("set times of %s: %w", p, err)
			}
		}
	case tar.TypeSymlink:
		if hdr.Linkname == "" {
			return &errLayer{hdr.Name, "symlink with an empty target"}
		}
		// The target is stored, never followed here: it means something
		// only inside the guest, relative to the guest's root.
		if err := t.root.Symlink(hdr.Linkname, p); err != nil {
			return fmt.Errorf("create symlink %s: %w", p, err)
		}
	case tar.TypeLink:
		target, err := t.hardlinkTarget(hdr)
		if err != nil {
			return err
		}
		n.ino = target.ino // one inode, two names
		if staged(n.ino.typ) {
			tp, _ := cleanEntryPath(hdr.Linkname)
			if err := t.root.Link(tp, p); err != nil {
				return fmt.Errorf("link %s to %s: %w", p, tp, err)
			}
		}
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		// Made in the file system image, not on the host: that needs no
		// privilege.
	default:
		return &errLayer{hdr.Name, fmt.Sprintf("unsupported tar entry type %q", hdr.Typeflag)}
	}
	dir.children[name] = n
	return nil
}

// hardlinkTarget resolves a hard link's target, which must be an existing
// non-directory entry reached without symlinks.
func (t *tree) hardlinkTarget(hdr *tar.Header) (*node, error) {
	tp, err := cleanEntryPath(hdr.Linkname)
	if err != nil {
		return nil, &errLayer{hdr.Name, fmt.Sprintf("hard link target %q: %s", hdr.Linkname, err.(*errLayer).reason)}
	}
	if tp == "" {
		return nil, &errLayer{hdr.Name, "hard link to the root directory"}
	}
	target, err := t.lookup(hdr.Name, tp)
	if err != nil {
		return nil, err
	}
	switch {
	case target == nil:
		return nil, &errLayer{hdr.Name, fmt.Sprintf("hard link to %q, which does not exist", hdr.Linkname)}
	case target.ino.typ == tar.TypeDir:
		return nil, &errLayer{hdr.Name, fmt.Sprintf("hard link to directory %q", hdr.Linkname)}
	}
	return target, nil
}

// whiteout applies a ".wh." entry named name in directory dir (at dirPath).
func (t *tree) whiteout(entry string, dir *node, dirPath, name string) error {
	if dirPath == "." {
		dirPath = ""
	}
	if name == whiteoutOpaque {
		return t.hideLower(dir, dirPath)
	}
	if strings.HasPrefix(name, whiteoutMeta) {
		return nil
	}
	hidden := strings.TrimPrefix(name, whiteoutPrefix)
	if hidden == "" || hidden == "." || hidden == ".." {
		return &errLayer{entry, "whiteout of an invalid name"}
	}
	c := dir.children[hidden]
	hp := path.Join(dirPath, hidden)
	switch {
	case c == nil:
		return nil
	case c.layer != t.layer:
		return t.remove(dir, hidden, hp)
	case c.ino.typ == tar.TypeDir:
		// This layer writes into the directory too: hide only what the
		// lower layers had there.
		return t.hideLower(c, hp)
	}
	return nil
}

func (t *tree) writeFile(p string, perm fs.FileMode, data io.Reader, size int64) error {
	f, err := t.root.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return fmt.Errorf("create %s: %w", p, err)
	}
	if err := copySparse(f, data, size); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", p, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	return nil
}

// zeros is a chunk of zero bytes to compare data with.
var zeros [64 << 10]byte

// copySparse copies size bytes of r to f, seeking over chunks of zeros
// instead of writing them: images carry files of gigabytes of zeros (the
// lastlog that useradd of a high uid grows), which then take no room in the
// staging directory, and mkfs.ext4 -d keeps them sparse.
func copySparse(f *os.File, r io.Reader, size int64) error {
	buf := make([]byte, len(zeros))
	for off := int64(0); off < size; {
		n := int(min(int64(len(buf)), size-off))
		if _, err := io.ReadFull(r, buf[:n]); err != nil {
			return err
		}
		if bytes.Equal(buf[:n], zeros[:n]) {
			if _, err := f.Seek(int64(n), io.SeekCurrent); err != nil {
				return err
			}
		} else if _, err := f.Write(buf[:n]); err != nil {
			return err
		}
		off += int64(n)
	}
	return f.Truncate(size)
}

func inodeOf(hdr *tar.Header) *inode {
	ino := &inode{
		typ: hdr.Typeflag, mode: hdr.Mode & 0o7777, uid: hdr.Uid, gid: hdr.Gid,
		major: hdr.Devmajor, minor: hdr.Devminor, size: hdr.Size, mtime: hdr.ModTime,
	}
	for k, v := range hdr.PAXRecords {
		// trusted.overlay.* would steer the guest's overlayfs, whose
		// lower layer this tree becomes (opaque, redirect, metacopy):
		// an image does not get to set them.
		if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok && !strings.HasPrefix(name, "trusted.overlay.") {
			if ino.xattrs == nil {
				ino.xattrs = map[string]string{}
			}
			ino.xattrs[name] = v
		}
	}
	return ino
}

// stagedPerm is the permission a staged file or directory gets: the
// image's bits less setuid, setgid and sticky (which the image gets later,
// without the host ever holding a setuid file of a foreign image), plus
// what the builder needs to read it.
func stagedPerm(ino *inode) fs.FileMode {
	perm := fs.FileMode(ino.mode & 0o777)
	if ino.typ == tar.TypeDir {
		return perm | stagedDirPerm
	}
	return perm | stagedFilePerm
}

// walk calls fn for every node below the root in lexical order, parents
// before children ("" is the root, visited first).
func (t *tree) walk(fn func(p string, n *node) error) error {
	var rec func(p string, n *node) error
	rec = func(p string, n *node) error {
		if err := fn(p, n); err != nil {
			return err
		}
		for _, name := range sortedNames(n.children) {
			if err := rec(path.Join(p, name), n.children[name]); err != nil {
				return err
			}
		}
		return nil
	}
	return rec("", t.top)
}

func sortedNames(m map[string]*node) []string { return slices.Sorted(maps.Keys(m)) }

// errDiffID is a layer whose uncompressed content does not hash to the
// digest the image's config names: corrupt or tampered with.
var errDiffID = errors.New("layer content does not match its digest")

// applyBlob decompresses a layer blob (gzip, zstd or plain tar, told by
// its first bytes) onto the tree and checks the uncompressed content
// against diffID ("sha256:<hex>"). The blob is read to its end, so a
// transport that verifies the compressed digest at EOF gets to.
func (t *tree) applyBlob(ctx context.Context, blob io.Reader, diffID string) error {
	br := bufio.NewReaderSize(blob, 64<<10)
	magic, _ := br.Peek(4)
	var plain io.Reader = br
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("decompress layer: %w", err)
		}
		defer zr.Close()
		plain = zr
	case bytes.Equal(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return fmt.Errorf("decompress layer: %w", err)
		}
		defer zr.Close()
		plain = zr
	}
	h := sha256.New()
	// Reading, decompressing and hashing run ahead in their own goroutine
	// while this one writes files: the two overlap on two cores.
	ahead := readAhead(io.TeeReader(plain, h))
	defer ahead.Close()
	if err := t.apply(ctx, ahead); err != nil {
		return err
	}
	// The tar end marker may be followed by padding that is part of the
	// digest.
	if _, err := io.Copy(io.Discard, ahead); err != nil {
		return fmt.Errorf("read layer: %w", err)
	}
	if _, err := io.Copy(io.Discard, br); err != nil {
		return fmt.Errorf("read layer: %w", err)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != diffID {
		return fmt.Errorf("%w: uncompressed sha256 is %s, the config says %s", errDiffID, got, diffID)
	}
	return nil
}

// aheadReader reads its source in a goroutine, a few chunks ahead of its
// reader.
type aheadReader struct {
	chunks chan []byte
	free   chan []byte
	done   chan struct{}
	exited chan struct{}
	errc   chan error // the source's last error, sent before chunks closes
	cur    []byte
	buf    []byte // cur's backing chunk, returned to free once read
	err    error
	once   sync.Once
}

const (
	aheadChunk = 256 << 10
	aheadDepth = 4
)

var errAheadClosed = errors.New("read-ahead closed")

func readAhead(src io.Reader) *aheadReader {
	a := &aheadReader{
		chunks: make(chan []byte, aheadDepth), free: make(chan []byte, aheadDepth+1),
		done: make(chan struct{}), exited: make(chan struct{}), errc: make(chan error, 1),
	}
	for range aheadDepth + 1 {
		a.free <- make([]byte, aheadChunk)
	}
	go func() {
		err := errAheadClosed
		defer func() {
			a.errc <- err
			close(a.chunks)
			close(a.exited)
		}()
		for {
			var buf []byte
			select {
			case buf = <-a.free:
			case <-a.done:
				return
			}
			n, rerr := io.ReadFull(src, buf)
			if n > 0 {
				select {
				case a.chunks <- buf[:n]:
				case <-a.done:
					return
				}
			}
			switch {
			case rerr == io.EOF || rerr == io.ErrUnexpectedEOF:
				err = io.EOF
				return
			case rerr != nil:
				err = rerr
				return
			}
		}
	}()
	return a
}

func (a *aheadReader) Read(p []byte) (int, error) {
	for len(a.cur) == 0 {
		if a.buf != nil {
			a.free <- a.buf[:cap(a.buf)]
			a.buf = nil
		}
		if a.err != nil {
			return 0, a.err
		}
		c, ok := <-a.chunks
		if !ok {
			a.err = <-a.errc
			continue
		}
		a.cur, a.buf = c, c
	}
	n := copy(p, a.cur)
	a.cur = a.cur[n:]
	return n, nil
}

// Close stops the goroutine and waits for it, so that the source may be
// closed after; the source is not read any further.
func (a *aheadReader) Close() {
	a.once.Do(func() { close(a.done) })
	<-a.exited
}
