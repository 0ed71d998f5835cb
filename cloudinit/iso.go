package cloudinit

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/kdomanski/iso9660"

	"github.com/stackvm/stack/internal/filenames"
)

// WriteISO writes the seed as an ISO 9660 image with volume id "cidata" and
// the files meta-data, network-config and user-data at its root (plain ISO
// 9660 names, which Linux shows without the ";1" version suffix). The image
// replaces path atomically (write to a temporary file in the same
// directory, then rename) and is private (0600).
func WriteISO(s *Seed, path string) error {
	w, err := iso9660.NewWriter()
	if err != nil {
		return fmt.Errorf("create iso writer: %w", err)
	}
	defer w.Cleanup()
	for _, f := range []struct {
		name string
		data []byte
	}{
		{FileMetaData, s.MetaData},
		{FileNetworkConfig, s.NetworkConfig},
		{FileUserData, s.UserData},
	} {
		if err := w.AddFile(bytes.NewReader(f.data), f.name); err != nil {
			return fmt.Errorf("add %s to seed: %w", f.name, err)
		}
	}
	return writeAtomic(path, func(out io.Writer) error {
		return w.WriteTo(out, VolumeID)
	})
}

// EnsureISO builds the seed for in and writes it to path unless the image
// there was made from the same inputs: the inputs' hash is kept in a
// sidecar file (path + filenames.HashSuffix), because the ISO's bytes carry
// timestamps and are not reproducible. It always returns the seed, whose
// InstanceID the caller needs for the ready line, and whose Warnings it
// reports. A user-data problem is a *UserDataError.
func EnsureISO(in Input, path string) (seed *Seed, rebuilt bool, err error) {
	seed, err = Build(in)
	if err != nil {
		return nil, false, err
	}
	sidecar := path + filenames.HashSuffix
	if old, err := os.ReadFile(sidecar); err == nil && strings.TrimSpace(string(old)) == seed.Hash {
		if st, err := os.Stat(path); err == nil && st.Mode().IsRegular() && st.Size() > 0 {
			return seed, false, nil
		}
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, false, fmt.Errorf("read seed hash: %w", err)
	}
	// The image first, then its hash: a crash in between leaves a stale
	// hash, which only causes one more rebuild.
	if err := WriteISO(seed, path); err != nil {
		return nil, false, err
	}
	if err := writeAtomic(sidecar, func(w io.Writer) error {
		_, err := io.WriteString(w, seed.Hash+"\n")
		return err
	}); err != nil {
		return nil, false, err
	}
	return seed, true, nil
}

// ReadISO returns the label and the root files of a seed image (names
// without the ";1" suffix), for tests and diagnostics.
func ReadISO(path string) (label string, files map[string][]byte, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", nil, fmt.Errorf("open seed: %w", err)
	}
	defer f.Close()
	img, err := iso9660.OpenImage(f)
	if err != nil {
		return "", nil, fmt.Errorf("read seed %s: %w", path, err)
	}
	label, err = img.Label()
	if err != nil {
		return "", nil, fmt.Errorf("read seed label: %w", err)
	}
	root, err := img.RootDir()
	if err != nil {
		return "", nil, fmt.Errorf("read seed root: %w", err)
	}
	children, err := root.GetChildren()
	if err != nil {
		return "", nil, fmt.Errorf("list seed root: %w", err)
	}
	files = map[string][]byte{}
	for _, c := range children {
		if c.IsDir() {
			continue
		}
		b, err := io.ReadAll(c.Reader())
		if err != nil {
			return "", nil, fmt.Errorf("read seed file %s: %w", c.Name(), err)
		}
		files[c.Name()] = b
	}
	return label, files, nil
}

// writeAtomic writes path through a temporary file in its directory (mode
// 0600), synced and renamed over path.
func writeAtomic(path string, write func(io.Writer) error) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, filenames.DirMode); err != nil {
		return fmt.Errorf("create directory %s: %w", dir, err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("create temporary file for %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(filenames.FileMode); err != nil {
		return fmt.Errorf("chmod %s: %w", tmp.Name(), err)
	}
	bw := bufio.NewWriterSize(tmp, 64<<10)
	if err := write(bw); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("rename %s: %w", path, err)
	}
	return nil
}
