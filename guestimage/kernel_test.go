package guestimage

import (
	"testing"
)

func TestParseDependsKernel(t *testing.T) {
	out := []byte("linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n")
	if got, err := parseDependsKernel(out); err != nil || got != "linux-image-6.1.0-56-cloud-amd64" {
		t.Errorf("parseDependsKernel = %q, %v", got, err)
	}
	alt := []byte("meta\n |Depends: <linux-image-virtual>\n  Depends: linux-image-6.1.0-9-cloud-amd64\n")
	if got, err := parseDependsKernel(alt); err != nil || got != "linux-image-6.1.0-9-cloud-amd64" {
		t.Errorf("parseDependsKernel (virtual first) = %q, %v", got, err)
	}
	if _, err := parseDependsKernel([]byte("meta\n  Depends: libc6\n")); err == nil {
		t.Error("parseDependsKernel accepted output without a kernel")
	}
}

func TestParseControl(t *testing.T) {
	out := []byte("Package: linux-image-6.1.0-56-cloud-amd64\nVersion: 6.1.192-2\nDescription: Linux\n more text: not a field\nSHA256: abc\n\nPackage: second\nVersion: 9\n")
	m := parseControl(out)
	if m["Package"] != "linux-image-6.1.0-56-cloud-amd64" || m["Version"] != "6.1.192-2" || m["SHA256"] != "abc" || m[" more text"] != "" {
		t.Errorf("parseControl = %v", m)
	}
}

func TestCompressionLevel(t *testing.T) {
	for in, want := range map[string]int{"": -1, "none": -1, "gzip1": 1, "gzip9": 9} {
		if got, err := compressionLevel(in); err != nil || got != want {
			t.Errorf("compressionLevel(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"gzip0", "gzip10", "zstd", "gzip"} {
		if _, err := compressionLevel(bad); err == nil {
			t.Errorf("compressionLevel(%q) accepted", bad)
		}
	}
}

func TestCacheKeyCoversInputs(t *testing.T) {
	base := manifest{Builder: builderVersion, KernelPackage: "k", KernelVersion: "1", KernelSHA256: "a", BusyboxSHA256: "b", InitSHA256: "c", Wanted: []string{"virtio_net"}, Compression: 1}
	k0 := cacheKey(base)
	withBuilt := base
	withBuilt.Built = "2026-01-01T00:00:00Z"
	if cacheKey(withBuilt) != k0 {
		t.Error("the build time must not change the key")
	}
	for name, mod := range map[string]func(*manifest){
		"builder":     func(m *manifest) { m.Builder = "other" },
		"kernel":      func(m *manifest) { m.KernelVersion = "2" },
		"kernel hash": func(m *manifest) { m.KernelSHA256 = "z" },
		"busybox":     func(m *manifest) { m.BusyboxSHA256 = "z" },
		"init":        func(m *manifest) { m.InitSHA256 = "z" },
		"modules":     func(m *manifest) { m.Wanted = []string{"virtio_net", "isofs"} },
		"compression": func(m *manifest) { m.Compression = 9 },
	} {
		m := base
		mod(&m)
		if cacheKey(m) == k0 {
			t.Errorf("changing the %s does not change the cache key", name)
		}
	}
}
