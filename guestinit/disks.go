package guestinit

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// FindDiskBySerial returns the /dev path of the virtio disk whose serial is
// serial, looking in sysBlock (normally /sys/block). Serials are compared
// after trimming whitespace and NULs (QEMU pads some of them).
func FindDiskBySerial(sysBlock, serial string) (string, error) {
	ents, err := os.ReadDir(sysBlock)
	if err != nil {
		return "", fmt.Errorf("find disk %q: %w", serial, err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(sysBlock, n, "serial"))
		if err != nil {
			continue // not every block device has a serial (loop, ram)
		}
		if strings.Trim(string(b), " \t\n\x00") == serial {
			return "/dev/" + n, nil
		}
	}
	return "", fmt.Errorf("find disk %q: no block device with that serial", serial)
}

// ext2/3/4 superblock: 1024 bytes in, magic 0xEF53 at offset 56.
const (
	extSuperOffset = 1024
	extMagicOffset = 56
	extMagic       = 0xEF53
)

// HasExtFilesystem reports whether r starts with an ext2/3/4 superblock.
func HasExtFilesystem(r io.ReaderAt) (bool, error) {
	var b [2]byte
	if _, err := r.ReadAt(b[:], extSuperOffset+extMagicOffset); err != nil {
		if err == io.EOF {
			return false, nil
		}
		return false, fmt.Errorf("read superblock: %w", err)
	}
	return binary.LittleEndian.Uint16(b[:]) == extMagic, nil
}

// ModuleEntry is one line of the builder's module list.
type ModuleEntry struct {
	Group string
	Path  string
}

// ParseModuleList reads the builder's module list: "<group> <absolute
// path>" lines, in load order within each group; blank lines and
// #-comments are ignored, and so are malformed lines (the list is written
// by the image builder, not by users).
func ParseModuleList(data []byte) []ModuleEntry {
	var out []ModuleEntry
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		f := strings.Fields(l)
		if len(f) != 2 || !strings.HasPrefix(f[1], "/") {
			continue
		}
		out = append(out, ModuleEntry{Group: f[0], Path: f[1]})
	}
	return out
}
