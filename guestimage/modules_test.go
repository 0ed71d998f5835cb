package guestimage

import (
	"reflect"
	"strings"
	"testing"
)

// A modules.dep in depmod's format: dependencies listed transitively, in no
// particular order that the resolver may rely on.
const fakeModulesDep = `kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko
kernel/net/9p/9pnet.ko:
kernel/fs/netfs/netfs.ko:
`

const fakeBuiltin = "kernel/fs/ext4/ext4.ko\nkernel/fs/jbd2/jbd2.ko\n"

func fakeIndex(t *testing.T, dep string) *ModuleIndex {
	t.Helper()
	idx, err := ParseModulesDep(strings.NewReader(dep), strings.NewReader(fakeBuiltin))
	if err != nil {
		t.Fatalf("ParseModulesDep: %v", err)
	}
	return idx
}

func TestResolveOrdersDependenciesFirst(t *testing.T) {
	idx := fakeIndex(t, fakeModulesDep)
	got, err := idx.Resolve([]string{"virtio_net", "virtio-rng", "virtio_mmio", "ext4", "9p?", "virtiofs?"})
	if err != nil {
		t.Fatalf("Resolve: %v", err)
	}
	want := []string{
		"kernel/net/core/failover.ko",
		"kernel/drivers/net/net_failover.ko",
		"kernel/drivers/virtio/virtio_ring.ko",
		"kernel/drivers/virtio/virtio.ko",
		"kernel/drivers/net/virtio_net.ko",
		"kernel/drivers/char/hw_random/virtio-rng.ko",
		"kernel/drivers/virtio/virtio_mmio.ko",
		"kernel/net/9p/9pnet.ko",
		"kernel/fs/netfs/netfs.ko",
		"kernel/fs/9p/9p.ko",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Resolve order:\n got %q\nwant %q", got, want)
	}
	// Whatever the order, every module must come after its dependencies.
	pos := map[string]int{}
	for i, p := range got {
		pos[normModName(p)] = i
	}
	for _, p := range got {
		for _, d := range idx.Deps[normModName(p)] {
			if pos[d] >= pos[normModName(p)] {
				t.Errorf("%s loads before its dependency %s", p, d)
			}
		}
	}
}

func TestResolveGroups(t *testing.T) {
	idx := fakeIndex(t, fakeModulesDep)
	got, err := idx.ResolveGroups([]string{"boot:virtio_mmio", "late:virtio-rng", "virtio_net", "fs-9p:9p?", "fs-9p:virtiofs?"})
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, e := range got {
		lines = append(lines, e.Group+" "+e.Path)
	}
	want := []string{
		"boot kernel/drivers/virtio/virtio_ring.ko",
		"boot kernel/drivers/virtio/virtio.ko",
		"boot kernel/drivers/virtio/virtio_mmio.ko",
		"boot kernel/net/core/failover.ko",
		"boot kernel/drivers/net/net_failover.ko",
		"boot kernel/drivers/net/virtio_net.ko",
		// A later group repeats its shared dependencies: it must load on
		// its own.
		"late kernel/drivers/virtio/virtio_ring.ko",
		"late kernel/drivers/virtio/virtio.ko",
		"late kernel/drivers/char/hw_random/virtio-rng.ko",
		"fs-9p kernel/net/9p/9pnet.ko",
		"fs-9p kernel/fs/netfs/netfs.ko",
		"fs-9p kernel/fs/9p/9p.ko",
	}
	if !reflect.DeepEqual(lines, want) {
		t.Errorf("ResolveGroups:\n got %q\nwant %q", lines, want)
	}
	if _, err := idx.ResolveGroups([]string{":virtio_net"}); err == nil {
		t.Error("empty group accepted")
	}
}

func TestResolveErrors(t *testing.T) {
	idx := fakeIndex(t, fakeModulesDep)
	if _, err := idx.Resolve([]string{"nosuch"}); err == nil || !strings.Contains(err.Error(), "neither a module nor built") {
		t.Errorf("missing required module: %v", err)
	}
	broken := fakeIndex(t, "kernel/a.ko: kernel/missing.ko\n")
	if _, err := broken.Resolve([]string{"a"}); err == nil || !strings.Contains(err.Error(), "not in modules.dep") {
		t.Errorf("dangling dependency: %v", err)
	}
	cyclic := fakeIndex(t, "kernel/a.ko: kernel/b.ko\nkernel/b.ko: kernel/a.ko\n")
	if _, err := cyclic.Resolve([]string{"a"}); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Errorf("cycle: %v", err)
	}
}

func TestParseModulesDepRejectsBadLines(t *testing.T) {
	for _, dep := range []string{"no colon here\n", "/abs/path.ko:\n", "kernel/../../etc/x.ko:\n", ": kernel/a.ko\n"} {
		if _, err := ParseModulesDep(strings.NewReader(dep), nil); err == nil {
			t.Errorf("ParseModulesDep(%q) accepted a bad line", dep)
		}
	}
}

func FuzzParseModulesDep(f *testing.F) {
	f.Add(fakeModulesDep, "virtio_net")
	f.Add("kernel/a.ko: kernel/b.ko\nkernel/b.ko: kernel/a.ko\n", "a")
	f.Add("kernel/a.ko.xz:\n", "a?")
	f.Fuzz(func(t *testing.T, dep, want string) {
		idx, err := ParseModulesDep(strings.NewReader(dep), nil)
		if err != nil {
			return
		}
		got, err := idx.Resolve(strings.Fields(want))
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, p := range got {
			if seen[p] {
				t.Fatalf("%s listed twice", p)
			}
			seen[p] = true
		}
	})
}
