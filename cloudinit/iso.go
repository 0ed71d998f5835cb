package cloudinit

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
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
// directory, then rename) and is private (0600). It is not fsync'd: see
// EnsureISO for why a seed need not be durable.
func WriteISO(s *Seed, path string) error {
	_, err := writeISO(s, path)
	return err
}

// writeISO is WriteISO that also returns the SHA-256 of the image written.
func writeISO(s *Seed, path string) (digest string, err error) {
	w, err := iso9660.NewWriter()
	if err != nil {
		return "", fmt.Errorf("create iso writer: %w", err)
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
			return "", fmt.Errorf("add %s to seed: %w", f.name, err)
		}
	}
	h := sha256.New()
	err = writeAtomic(path, func(out io.Writer) error {
		return w.WriteTo(io.MultiWriter(out, h), VolumeID)
	})
	return hex.EncodeToString(h.Sum(nil)), err
}

// EnsureISO builds the seed for in and writes it to path unless the image
// there was made from the same inputs: the inputs' hash is kept in a
// sidecar file (path + filenames.HashSuffix), because the ISO's bytes carry
// timestamps and are not reproducible.
//
// The sidecar also holds the SHA-256 of the image, checked before an image
// is reused. Neither file is fsync'd (an fsync costs more than generating
// the seed): after a crash, an image or sidecar that did not reach the
// disk fails the check and is written again. It always returns the seed, whose
// InstanceID the caller needs for the ready line, and whose Warnings it
// reports. A user-data problem is a *UserDataError.
func EnsureISO(in Input, path string) (seed *Seed, rebuilt bool, err error) {
	seed, err = Build(in)
	if err != nil {
		return nil, false, err
	}
	sidecar := path + filenames.HashSuffix
	if old, err := os.ReadFile(sidecar); err == nil {
		inputs, digest, _ := strings.Cut(strings.TrimSpace(string(old)), " ")
		if inputs == seed.Hash && fileDigest(path) == digest {
			return seed, false, nil
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, fmt.Errorf("read seed hash: %w", err)
	}
	// The image first, then its hash: a crash in between leaves a stale
	// hash, which only causes one more rebuild.
	digest, err := writeISO(seed, path)
	if err != nil {
		return nil, false, err
	}
	if err := writeAtomic(sidecar, func(w io.Writer) error {
		_, err := io.WriteString(w, seed.Hash+" "+digest+"\n")
		return err
	}); err != nil {
		return nil, false, err
	}
	return seed, true, nil
}

// RecordedInstanceID returns the instance-id of the seed that EnsureISO
// last wrote at path, from its sidecar (for a caller that changes a running
// VM without regenerating its seed).
func RecordedInstanceID(path string) (string, error) {
	b, err := os.ReadFile(path + filenames.HashSuffix)
	if err != nil {
		return "", fmt.Errorf("read seed hash: %w", err)
	}
	inputs, _, _ := strings.Cut(strings.TrimSpace(string(b)), " ")
	if len(inputs) < 16 {
		return "", fmt.Errorf("read seed hash %s: malformed", path+filenames.HashSuffix)
	}
	return instanceID(inputs), nil
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

// fileDigest is the hex SHA-256 of the regular file at path, "" when it
// cannot be read.
func fileDigest(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return ""
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return ""
	}
	return hex.EncodeToString(h.Sum(nil))
}

// writeAtomic writes path through a temporary file in its directory (mode
// 0600) renamed over path: readers see the old file or the new one.
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
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("rename %s: %w", path, err)
	}
	return nil
}
