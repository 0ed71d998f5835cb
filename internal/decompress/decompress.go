// Package decompress turns a compressed input file (a root disk, an image
// archive) into its decompressed content, once, in a cache keyed by the
// compressed file's digest.
package decompress

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/internal/fsutil"
)

// Compressions that Cached understands, recognised by their magic
// numbers rather than the file's name.
const (
	Gzip = "gzip"
	Zstd = "zstd"
	Xz   = "xz"
)

var magics = []struct {
	name  string
	magic []byte
}{
	{Gzip, []byte{0x1f, 0x8b}},
	{Zstd, []byte{0x28, 0xb5, 0x2f, 0xfd}},
	{Xz, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}},
}

// Kind reports how the file at path is compressed ("" for not).
func Kind(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("check compression: %w", err)
	}
	defer f.Close()
	head := make([]byte, 6)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("check compression: %w", err)
	}
	for _, m := range magics {
		if bytes.HasPrefix(head[:n], m.magic) {
			return m.name, nil
		}
	}
	return "", nil
}

// Cached returns the file to read for path: path itself when it is not
// compressed, else its decompressed content in cacheDir, named by the
// SHA-256 of the compressed file. The first caller
// decompresses (sparsely) into a temp file and renames it into place once
// complete and synced; concurrent callers wait on a lock and find it
// made. A decompression that was killed leaves only a temp file, which
// is never taken for the content and is removed by the next one. The
// cached file is read-only: overlays name it as their backing file.
func Cached(ctx context.Context, path, cacheDir string) (string, error) {
	kind, err := Kind(path)
	if err != nil || kind == "" {
		return path, err
	}
	digest, err := fsutil.FileSHA256(path)
	if err != nil {
		return "", err
	}
	out := filepath.Join(cacheDir, "sha256-"+digest)
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	lock, err := fsutil.LockFile(ctx, out+".lock", nil)
	if err != nil {
		return "", fmt.Errorf("lock %s: %w", out, err)
	}
	defer lock.Unlock()
	if _, err := os.Stat(out); err == nil {
		return out, nil // made while this caller waited
	}
	stale, _ := filepath.Glob(filepath.Join(cacheDir, "."+filepath.Base(out)+".tmp-*"))
	for _, s := range stale {
		os.Remove(s) // a decompression that was killed: the lock is ours
	}
	if err := decompressTo(ctx, path, kind, out); err != nil {
		return "", err
	}
	return out, nil
}

// decompressTo writes path's decompressed content to out through a temp
// file, fsynced before the rename.
func decompressTo(ctx context.Context, path, kind, out string) error {
	if err := os.MkdirAll(filepath.Dir(out), filenames.DirMode); err != nil {
		return fmt.Errorf("create directory %s: %w", filepath.Dir(out), err)
	}
	in, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("decompress: %w", err)
	}
	defer in.Close()
	r, closeReader, err := decompressor(bufio.NewReaderSize(in, 1<<20), kind)
	if err != nil {
		return fmt.Errorf("decompress %s (%s): %w", path, kind, err)
	}
	defer closeReader()
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp-*")
	if err != nil {
		return fmt.Errorf("decompress: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	n, err := copySparse(ctx, tmp, r)
	if err == nil {
		// Trailing zeros were skipped, not written: the size is set.
		err = tmp.Truncate(n)
	}
	if err == nil {
		err = tmp.Chmod(0o400)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("decompress %s (%s): %w", path, kind, err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return fmt.Errorf("decompress: %w", err)
	}
	if err := fsutil.SyncFile(filepath.Dir(out)); err != nil && !errors.Is(err, fs.ErrPermission) {
		return fmt.Errorf("decompress: sync %s: %w", filepath.Dir(out), err)
	}
	return nil
}

// decompressor reads kind-compressed data; each checks its stream's
// checksum at its end, so a damaged file is an error, not a base image.
func decompressor(r io.Reader, kind string) (io.Reader, func(), error) {
	switch kind {
	case Gzip:
		z, err := gzip.NewReader(r)
		if err != nil {
			return nil, nil, err
		}
		return z, func() { z.Close() }, nil
	case Zstd:
		z, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, nil, err
		}
		return z, z.Close, nil
	case Xz:
		z, err := xz.NewReader(r)
		if err != nil {
			return nil, nil, err
		}
		return z, func() {}, nil
	}
	return nil, nil, fmt.Errorf("unknown compression %q", kind)
}

// sparseBlock is the unit copySparse writes or skips.
const sparseBlock = 64 << 10

// copySparse copies r to f, seeking over blocks of zeros rather than
// writing them (disk images are mostly empty), checking ctx between
// blocks; it returns the bytes copied. Only a clean EOF ends it: a
// truncated stream's io.ErrUnexpectedEOF is an error.
func copySparse(ctx context.Context, f *os.File, r io.Reader) (int64, error) {
	buf, zeros := make([]byte, sparseBlock), make([]byte, sparseBlock)
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		m, err := fill(r, buf)
		if m > 0 {
			if bytes.Equal(buf[:m], zeros[:m]) {
				if _, err := f.Seek(int64(m), io.SeekCurrent); err != nil {
					return n, err
				}
			} else if _, err := f.Write(buf[:m]); err != nil {
				return n, err
			}
			n += int64(m)
		}
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// fill reads until buf is full or r fails; io.EOF only at the stream's
// clean end.
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}
