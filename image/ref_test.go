package image

import (
	"context"
	"encoding/base64"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

func TestParseRef(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"postgres:16-alpine", "index.docker.io/library/postgres:16-alpine"},
		{"alpine", "index.docker.io/library/alpine:latest"},
		{"docker://ghcr.io/org/app@sha256:" + strings.Repeat("a", 64), "ghcr.io/org/app@sha256:" + strings.Repeat("a", 64)},
		{"localhost:5000/app:1", "localhost:5000/app:1"},
		{"oci:/tmp/layout:v1", "oci:/tmp/layout:v1"},
		{"oci:layout", "oci:layout"},
		{"docker-archive:/tmp/app.tar", "docker-archive:/tmp/app.tar"},
	} {
		r, err := ParseRef(tc.in)
		if err != nil {
			t.Errorf("ParseRef(%q): %v", tc.in, err)
			continue
		}
		if r.String() != tc.want {
			t.Errorf("ParseRef(%q) = %s, want %s", tc.in, r, tc.want)
		}
	}
	for _, tc := range []struct {
		in   string
		http bool
	}{{"localhost:5000/a", true}, {"127.0.0.1:5000/a", true}, {"[::1]:5000/a", true}, {"localhost/a", true}, {"example.com/a", false}, {"localhost", false}} {
		r, err := ParseRef(tc.in)
		if err != nil {
			t.Fatal(err)
		}
		if got := r.Name.Context().Scheme() == "http"; got != tc.http {
			t.Errorf("%s: plain HTTP %v, want %v", tc.in, got, tc.http)
		}
	}
	for _, bad := range []string{"oci:", "docker-archive:", "UPPER/case", "a@sha256:short"} {
		if _, err := ParseRef(bad); err == nil {
			t.Errorf("ParseRef(%q) succeeded", bad)
		}
	}
}

func TestResolvePicksAmd64(t *testing.T) {
	isolate(t)
	host := serve(t, nil)
	amd := imageOf(t, "amd64", v1.Config{Cmd: []string{"amd64"}}, layerOf(t, ent{Name: "arch", Data: "amd64"}))
	arm := imageOf(t, "arm64", v1.Config{Cmd: []string{"arm64"}}, layerOf(t, ent{Name: "arch", Data: "arm64"}))
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
	)
	if err := remote.WriteIndex(mustRef(t, host+"/multi:1"), idx); err != nil {
		t.Fatal(err)
	}
	// The same index in an OCI layout, tagged, next to another image.
	dir := filepath.Join(t.TempDir(), "layout")
	writeLayout(t, dir, layoutItem{Tag: "multi", Index: idx}, layoutItem{Tag: "arm", Image: arm})
	wantID, _ := amd.ConfigName()
	wantManifest, _ := amd.Digest()
	for _, ref := range []string{host + "/multi:1", "oci:" + dir + ":multi"} {
		r, err := ParseRef(ref)
		if err != nil {
			t.Fatal(err)
		}
		src, err := resolve(context.Background(), r, nil, t.TempDir())
		if err != nil {
			t.Fatalf("resolve %s: %v", ref, err)
		}
		if src.id != wantID.String() || src.manifestDigest != wantManifest.String() || !reflect.DeepEqual(src.config.Config.Cmd, []string{"amd64"}) {
			t.Errorf("%s: picked %s (manifest %s, cmd %v), want the amd64 image %s (manifest %s)", ref, src.id, src.manifestDigest, src.config.Config.Cmd, wantID, wantManifest)
		}
		if len(src.layers) != 1 || src.sizes[0] <= 0 || !src.compressed {
			t.Errorf("%s: layers %d, sizes %v", ref, len(src.layers), src.sizes)
		}
	}
}

// resolveErr resolves ref and returns the error, failing the test on
// success.
func resolveErr(t *testing.T, ref string) error {
	t.Helper()
	r, err := ParseRef(ref)
	if err == nil {
		_, err = resolve(context.Background(), r, nil, t.TempDir())
	}
	if err == nil {
		t.Fatalf("resolve %s succeeded", ref)
	}
	return err
}

func TestResolveRefuses(t *testing.T) {
	isolate(t)
	const user, pass = "stack", "s3cret"
	private := serve(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if u, p, ok := r.BasicAuth(); !ok || u != user || p != pass {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	host := serve(t, nil)
	good := imageOf(t, "", v1.Config{}, layerOf(t, ent{Name: "ok", Data: "ok"}))
	push(t, host+"/good:1", good)
	push(t, private+"/secret:1", good, remote.WithAuth(&authn.Basic{Username: user, Password: pass}))
	arm := imageOf(t, "arm64", v1.Config{}, layerOf(t, ent{Name: "arch", Data: "arm64"}))
	push(t, host+"/arm:1", arm)
	armIdx := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: arm,
		Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}})
	if err := remote.WriteIndex(mustRef(t, host+"/armidx:1"), armIdx); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "layout")
	writeLayout(t, dir, layoutItem{Tag: "a", Image: good}, layoutItem{Tag: "b", Image: good})

	for _, tc := range []struct{ ref, want string }{
		{host + "/nosuch:1", "no such image nosuch in registry " + host},
		{host + "/good:2", `no such tag or digest "2" of good in registry ` + host},
		{host + "/good@sha256:" + strings.Repeat("0", 64), "no such tag or digest"},
		{private + "/secret:1", "registry " + private + " refused access (HTTP 401): the image does not exist or needs credentials (docker login " + private + ")"},
		{host + "/arm:1", "image is linux/arm64, and VMs run linux/amd64"},
		{host + "/armidx:1", "image has no linux/amd64 variant (it has linux/arm64)"},
		{"oci:" + dir, "holds 2 images: name one as oci:" + dir + ":TAG"},
		{"oci:" + dir + ":c", `has no image tagged "c" (it has a, b)`},
		{"oci:" + t.TempDir(), "open OCI layout"},
		{"docker-archive:" + filepath.Join(t.TempDir(), "missing.tar"), "open docker archive"},
	} {
		if err := resolveErr(t, tc.ref); !strings.Contains(err.Error(), tc.want) {
			t.Errorf("resolve %s = %v\nwant an error containing %q", tc.ref, err, tc.want)
		}
	}

	// With the credentials in the user's Docker config, the private
	// registry lets the pull through.
	cfg := `{"auths":{"` + private + `":{"auth":"` + base64.StdEncoding.EncodeToString([]byte(user+":"+pass)) + `"}}}`
	if err := os.WriteFile(filepath.Join(os.Getenv("DOCKER_CONFIG"), "config.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	r, _ := ParseRef(private + "/secret:1")
	if _, err := resolve(context.Background(), r, nil, t.TempDir()); err != nil {
		t.Errorf("resolve with credentials from the Docker config: %v", err)
	}
}
