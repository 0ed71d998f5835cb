// Command web writes an example OCI image as an OCI image layout, from
// files on this machine (no registry): Debian's static busybox, and a shell
// script as its entrypoint that serves a page over HTTP as an unprivileged
// user. examples/stacks/image.hcl boots it:
//
//	go run ./examples/images/web /tmp/web-oci
//	stack -f examples/stacks/image.hcl --var image=oci:/tmp/web-oci:web up
package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// serve is the entrypoint: the page, then busybox httpd in the foreground.
const serve = `#!/bin/sh
set -e
mkdir -p /srv/www
echo "hello from $(hostname), served by $(id -un) from an OCI image" > /srv/www/index.html
exec httpd -f -p "${PORT:-8080}" -h /srv/www
`

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: web LAYOUT-DIR")
		os.Exit(2)
	}
	if err := write(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "web:", err)
		os.Exit(1)
	}
}

type entry struct {
	name, link string
	mode       int64
	uid, gid   int
	body       []byte
	kind       byte
}

func write(dir string) error {
	bb, err := os.ReadFile("/bin/busybox") // Debian's busybox-static
	if err != nil {
		return fmt.Errorf("read the static busybox (apt-get install busybox-static): %w", err)
	}
	entries := []entry{
		{name: "bin/", mode: 0o755, kind: tar.TypeDir},
		{name: "bin/busybox", mode: 0o755, body: bb, kind: tar.TypeReg},
		{name: "etc/", mode: 0o755, kind: tar.TypeDir},
		{name: "etc/passwd", mode: 0o644, kind: tar.TypeReg,
			body: []byte("root:x:0:0:root:/root:/bin/sh\nwww:x:1000:1000:web:/home/www:/bin/sh\n")},
		{name: "etc/group", mode: 0o644, kind: tar.TypeReg, body: []byte("root:x:0:\nwww:x:1000:\n")},
		{name: "home/", mode: 0o755, kind: tar.TypeDir},
		{name: "home/www/", mode: 0o755, uid: 1000, gid: 1000, kind: tar.TypeDir},
		{name: "srv/", mode: 0o755, uid: 1000, gid: 1000, kind: tar.TypeDir},
		{name: "tmp/", mode: 0o1777, kind: tar.TypeDir},
		{name: "serve.sh", mode: 0o755, body: []byte(serve), kind: tar.TypeReg},
	}
	for _, cmd := range []string{"sh", "httpd", "mkdir", "echo", "id", "hostname", "cat", "ls", "wget", "ps"} {
		entries = append(entries, entry{name: "bin/" + cmd, link: "busybox", kind: tar.TypeSymlink})
	}
	layer, err := tarLayer(entries)
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config = v1.Config{
		Entrypoint:   []string{"/serve.sh"},
		Env:          []string{"PATH=/bin", "PORT=8080"},
		WorkingDir:   "/srv",
		User:         "www",
		ExposedPorts: map[string]struct{}{"8080/tcp": {}},
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	return p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "web"}))
}

func tarLayer(entries []entry) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: e.mode, Uid: e.uid, Gid: e.gid, Typeflag: e.kind,
			Linkname: e.link, Size: int64(len(e.body)), ModTime: time.Unix(1700000000, 0)}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
}
