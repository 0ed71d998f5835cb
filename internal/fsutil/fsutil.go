// Package fsutil holds the two file-system primitives every package of
// stack that keeps files shares: atomic replacement and advisory locks.
package fsutil

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stackvm/stack/internal/filenames"
)

// WriteFileAtomic writes data to path through a temp file in the same
// directory, fsyncs it, renames it into place and fsyncs the directory, so a
// reader sees the old or the new content and never a torn file. The file is
// private (filenames.FileMode).
func WriteFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	if err := f.Chmod(filenames.FileMode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Lock is a held advisory lock. It belongs to the open file: it is
// released on Unlock or when the process dies, so a killed command never
// leaves a stale lock.
type Lock struct {
	f    *os.File
	path string
}

// Remove deletes the lock file and releases the lock: what a command that
// removed the namespace does last, leaving nothing behind. A command that
// waited on the removed file finds out and locks the path anew (LockFile).
func (l *Lock) Remove() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := os.Remove(l.path)
	if uerr := l.Unlock(); err == nil {
		err = uerr
	}
	return err
}

// Unlock releases the lock; it may be called more than once.
func (l *Lock) Unlock() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close() // closing the fd releases the flock
	l.f = nil
	return err
}

// lockPoll is how often a busy lock is tried again.
const lockPoll = 20 * time.Millisecond

// LockFile takes an exclusive flock on path (created 0600 with its
// directory), waiting until ctx ends. When the lock is busy, waiting (if
// set) is called once before the wait, to tell the user. A lock file that
// its holder removed while this waited (Lock.Remove) is not the path's any
// more: LockFile then locks the file now at the path, so that two commands
// never hold locks on two files.
func LockFile(ctx context.Context, path string, waiting func()) (*Lock, error) {
	told := false
	for {
		if err := os.MkdirAll(filepath.Dir(path), filenames.DirMode); err != nil {
			return nil, err
		}
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, filenames.FileMode)
		if err != nil {
			return nil, err
		}
		for {
			err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
			if err == nil {
				if isPath(f, path) {
					return &Lock{f: f, path: path}, nil
				}
				f.Close() // removed by its last holder: lock the new one
				break
			}
			if !errors.Is(err, unix.EWOULDBLOCK) {
				f.Close()
				return nil, err
			}
			if !told && waiting != nil {
				waiting()
				told = true
			}
			select {
			case <-ctx.Done():
				f.Close()
				return nil, ctx.Err()
			case <-time.After(lockPoll):
			}
		}
	}
}

// isPath reports whether the open file f is the file at path.
func isPath(f *os.File, path string) bool {
	a, errA := f.Stat()
	b, errB := os.Stat(path)
	return errA == nil && errB == nil && os.SameFile(a, b)
}

// TryLockFile takes path's lock as LockFile does, without waiting: it
// returns a nil Lock, and no error, when another holds it.
func TryLockFile(path string) (*Lock, error) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	l, err := LockFile(ctx, path, nil)
	if errors.Is(err, context.Canceled) {
		return nil, nil
	}
	return l, err
}

// SyncFile flushes a file's data to disk.
func SyncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// SyncDir flushes a directory's entries to disk (a rename or a create in
// it is durable after).
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// SyncTree flushes every file and directory under dir to disk.
func SyncTree(dir string) error {
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		switch {
		case err != nil:
			return err
		case d.IsDir():
			return SyncDir(path)
		case d.Type().IsRegular():
			if err := SyncFile(path); err != nil {
				return fmt.Errorf("sync %s: %w", path, err)
			}
		}
		return nil
	})
}

// CopySparse copies src's data regions into a new file at path (0600; it
// must not exist), leaving its holes holes: guest memory and disk images
// are mostly untouched, and their copies are often taken while a guest is
// paused.
func CopySparse(path string, src *os.File) error {
	fi, err := src.Stat()
	if err != nil {
		return err
	}
	dst, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer dst.Close()
	if err := dst.Truncate(fi.Size()); err != nil {
		return err
	}
	return DataRegions(src, func(off, n int64) error {
		// File to file: Go copies in the kernel (copy_file_range or
		// splice), not through a user-space buffer.
		if _, err := src.Seek(off, io.SeekStart); err != nil {
			return err
		}
		if _, err := dst.Seek(off, io.SeekStart); err != nil {
			return err
		}
		if _, err := io.CopyN(dst, src, n); err != nil {
			return fmt.Errorf("copy %s: %w", src.Name(), err)
		}
		return nil
	})
}

// DataRegions calls fn with the offset and length of each of f's data
// regions, in order (SEEK_DATA, SEEK_HOLE): holes are skipped.
func DataRegions(f *os.File, fn func(off, n int64) error) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	fd := int(f.Fd())
	for off := int64(0); off < fi.Size(); {
		data, err := syscall.Seek(fd, off, seekData)
		if err != nil {
			break // ENXIO: no data after off
		}
		hole, err := syscall.Seek(fd, data, seekHole)
		if err != nil {
			hole = fi.Size()
		}
		if err := fn(data, hole-data); err != nil {
			return err
		}
		off = hole
	}
	return nil
}

// lseek whences for sparse files (linux/fs.h).
const (
	seekData = 3
	seekHole = 4
)

// CopyFileSparse copies the file at src to a new file at dst with
// CopySparse.
func CopyFileSparse(dst, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	return CopySparse(dst, f)
}

// FileSHA256 is the hex SHA-256 of a file's content.
func FileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
