package disks

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// What stack reads of a qcow2 image's header (QEMU's docs/interop/qcow2.txt)
// to tell whether the image points at other files: a backing file, whose
// contents show through the image's unallocated clusters, and an external
// data file, which holds the image's data. A base image is the user's (or
// a download's), so the files it names are the image's author's choice: an
// image naming /etc/shadow as its backing file would give the guest the
// host's password hashes. qemu-img would follow both when it creates an
// overlay, and QEMU when it boots one, as the user running stack.

const (
	qcow2Magic = "QFI\xfb"
	// qcow2V2HeaderLen is the header's length in version 2, and where
	// version 3 headers start their extra fields.
	qcow2V2HeaderLen = 72
	qcow2V3HeaderLen = 104
	// qcow2ExtEnd ends the header extensions; qcow2ExtDataFile names the
	// external data file.
	qcow2ExtEnd      = 0x00000000
	qcow2ExtDataFile = 0x44415441
	// qcow2IncompatDataFile is the incompatible feature bit of an image
	// whose data lives in an external data file.
	qcow2IncompatDataFile = 1 << 2
	// qcow2MaxName is QEMU's limit on the backing file's name.
	qcow2MaxName = 1023
	// The header and its extensions lie in the first cluster; clusters
	// are 512 bytes to 2 MiB.
	qcow2MinClusterBits = 9
	qcow2MaxClusterBits = 21
)

// errNotQcow2: the file does not start with the qcow2 magic.
var errNotQcow2 = errors.New("not a qcow2 image")

// qcow2Refs is what a qcow2 header says about other files.
type qcow2Refs struct {
	Version     uint32
	BackingFile string // "" when none
	// DataFile is the external data file's name from its header
	// extension; HasDataFile is set when the header needs one, named or
	// not (the incompatible feature bit).
	DataFile    string
	HasDataFile bool
}

// readQcow2Refs parses the header of the qcow2 image in r. It returns
// errNotQcow2 when r does not start with the qcow2 magic, and an error for
// a header QEMU would not open either (a bad version, cluster size or
// extension).
func readQcow2Refs(r io.ReaderAt) (qcow2Refs, error) {
	var refs qcow2Refs
	var h [qcow2V3HeaderLen]byte
	n, err := r.ReadAt(h[:], 0)
	if n < 4 || string(h[:4]) != qcow2Magic {
		if err != nil && !errors.Is(err, io.EOF) {
			return refs, fmt.Errorf("read qcow2 header: %w", err)
		}
		return refs, errNotQcow2
	}
	be := binary.BigEndian
	refs.Version = be.Uint32(h[4:])
	headerLen := uint64(qcow2V2HeaderLen)
	switch refs.Version {
	case 2:
	case 3:
		if n < qcow2V3HeaderLen {
			return refs, errors.New("read qcow2 header: truncated")
		}
		headerLen = uint64(be.Uint32(h[100:]))
		if headerLen < qcow2V3HeaderLen {
			return refs, fmt.Errorf("read qcow2 header: header length %d is below %d", headerLen, qcow2V3HeaderLen)
		}
		refs.HasDataFile = be.Uint64(h[72:])&qcow2IncompatDataFile != 0
	default:
		return refs, fmt.Errorf("read qcow2 header: version %d (want 2 or 3)", refs.Version)
	}
	if n < qcow2V2HeaderLen {
		return refs, errors.New("read qcow2 header: truncated")
	}
	clusterBits := be.Uint32(h[20:])
	if clusterBits < qcow2MinClusterBits || clusterBits > qcow2MaxClusterBits {
		return refs, fmt.Errorf("read qcow2 header: cluster bits %d out of range", clusterBits)
	}
	cluster := uint64(1) << clusterBits
	if headerLen > cluster {
		return refs, fmt.Errorf("read qcow2 header: header length %d beyond the first cluster", headerLen)
	}
	// The bounds are QEMU's (qcow2_do_open): what it refuses to open is
	// an error here too, and what it opens is read as it reads it.
	backingOff, backingLen := be.Uint64(h[8:]), uint64(be.Uint32(h[16:]))
	if backingOff > cluster {
		return refs, fmt.Errorf("read qcow2 header: backing file name at %d, beyond the first cluster", backingOff)
	}
	if backingOff != 0 && backingLen > 0 {
		if backingLen > min(qcow2MaxName, cluster-backingOff) {
			return refs, fmt.Errorf("read qcow2 header: backing file name of %d bytes at %d, too long", backingLen, backingOff)
		}
		name, err := readAtFull(r, int64(backingOff), int(backingLen))
		if err != nil {
			return refs, fmt.Errorf("read qcow2 backing file name: %w", err)
		}
		refs.BackingFile = string(name)
	}
	// Header extensions follow the header, up to the backing file's name
	// or else the end of the first cluster.
	end := cluster
	if backingOff != 0 {
		end = backingOff
	}
	for off := headerLen; off+8 <= end; {
		e, err := readAtFull(r, int64(off), 8)
		if err != nil {
			return refs, fmt.Errorf("read qcow2 header extension at %d: %w", off, err)
		}
		typ, size := be.Uint32(e), uint64(be.Uint32(e[4:]))
		if typ == qcow2ExtEnd {
			break
		}
		off += 8
		if size > end-off {
			return refs, fmt.Errorf("read qcow2 header extension %#x at %d: %d bytes, beyond the first cluster", typ, off-8, size)
		}
		if typ == qcow2ExtDataFile {
			name, err := readAtFull(r, int64(off), int(size))
			if err != nil {
				return refs, fmt.Errorf("read qcow2 data file name: %w", err)
			}
			refs.DataFile, refs.HasDataFile = string(name), true
		}
		off += (size + 7) &^ 7 // padded to 8 bytes
	}
	return refs, nil
}

// readAtFull reads n bytes at off.
func readAtFull(r io.ReaderAt, off int64, n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := r.ReadAt(b, off); err != nil && !(errors.Is(err, io.EOF) && n == 0) {
		if errors.Is(err, io.EOF) {
			return nil, io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return b, nil
}

// CheckBase refuses a user's base image that points at other files: a
// qcow2 image whose header names a backing file or an external data file.
// Images stack makes itself (overlays of its own files) are not base
// images and are not checked.
func CheckBase(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("check base image: %w", err)
	}
	defer f.Close()
	refs, err := readQcow2Refs(f)
	switch {
	case errors.Is(err, errNotQcow2):
		return nil // raw: it names nothing
	case err != nil:
		return fmt.Errorf("check base image %s: %w", path, err)
	case refs.BackingFile != "":
		return fmt.Errorf("check base image %s: its qcow2 header names a backing file, %q; stack does not boot base images that point at other files (an image could show the guest any host file): make it standalone with `qemu-img convert -O qcow2 %s standalone.qcow2`", path, refs.BackingFile, path)
	case refs.HasDataFile:
		name := refs.DataFile
		if name == "" {
			name = "(unnamed)"
		}
		return fmt.Errorf("check base image %s: its qcow2 header names an external data file, %q; stack does not boot base images that point at other files (an image could show the guest any host file): make it standalone with `qemu-img convert -O qcow2 %s standalone.qcow2`", path, name, path)
	}
	return nil
}
