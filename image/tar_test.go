package image

import (
	"archive/tar"
	"bytes"
	"io"
	"testing"
	"time"
)

// ent is one tar entry of a test layer; Type defaults to a regular file
// and Mode to 0644 (0755 for directories).
type ent struct {
	Name, Link, Data string
	Type             byte
	Mode             int64
	UID, GID         int
	Major, Minor     int64
	Xattrs           map[string]string
}

var epoch = time.Unix(1700000000, 0)

// tarOf writes entries as a tar stream, in their order.
func tarOf(t testing.TB, entries ...ent) []byte {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		h := &tar.Header{Name: e.Name, Linkname: e.Link, Typeflag: e.Type, Mode: e.Mode,
			Uid: e.UID, Gid: e.GID, Devmajor: e.Major, Devminor: e.Minor, ModTime: epoch, Format: tar.FormatPAX}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.Data))
		}
		for k, v := range e.Xattrs {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords["SCHILY.xattr."+k] = v
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("tar header %s: %v", e.Name, err)
		}
		if _, err := io.WriteString(tw, e.Data); err != nil {
			t.Fatalf("tar data %s: %v", e.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}
