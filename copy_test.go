package stack

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestExtractTarRefusesEscapes: a guest's archive cannot write outside the
// destination, by name or through a link it made.
func TestExtractTarRefusesEscapes(t *testing.T) {
	type entry struct {
		name, link string
		dir        bool
	}
	for _, tc := range []struct {
		name    string
		entries []entry
		want    string
	}{
		{"parent", []entry{{name: "top/"}, {name: "top/../../escaped"}}, "unexpected entry"},
		{"dotdot top", []entry{{name: "../escaped"}}, "unexpected entry"},
		{"another top", []entry{{name: "top/", dir: true}, {name: "other"}}, "unexpected entry"},
		{"through a link", []entry{{name: "top/", dir: true}, {name: "top/l", link: "/"}, {name: "top/l/escaped"}}, "under a link"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			tw := tar.NewWriter(&b)
			for _, e := range tc.entries {
				h := &tar.Header{Name: e.name, Mode: 0o644, Typeflag: tar.TypeReg}
				switch {
				case e.dir || strings.HasSuffix(e.name, "/"):
					h.Typeflag, h.Mode = tar.TypeDir, 0o755
				case e.link != "":
					h.Typeflag, h.Linkname = tar.TypeSymlink, e.link
				}
				if err := tw.WriteHeader(h); err != nil {
					t.Fatal(err)
				}
			}
			tw.Close()
			dir := t.TempDir()
			err := extractTar(&b, filepath.Join(dir, "dst"))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "escaped")); err == nil {
				t.Fatal("an entry escaped")
			}
			if _, err := os.Stat("/escaped"); err == nil {
				t.Fatal("an entry escaped to /")
			}
		})
	}
}
