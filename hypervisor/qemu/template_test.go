package qemu

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stackvm/stack/guestimage"
	"github.com/stackvm/stack/guestproto"
	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/hypervisor/console"
	"github.com/stackvm/stack/hypervisor/qemu/templates"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/internal/netaddr"
)

// templateVM is a VM of the one template shape these tests use: the real
// guest image, one NIC (a socketpair nobody reads), a workload that prints
// what makes a clone distinct.
func templateVM(t *testing.T, name, mac, ip string) *hypervisor.Config {
	t.Helper()
	img, err := guestimage.Ensure(context.Background(), guestimage.Options{})
	if err != nil {
		t.Fatalf("build the guest image: %v", err)
	}
	kernel, initrd := img.Kernel, img.Initramfs
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_DGRAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	vmEnd, hostEnd := os.NewFile(uintptr(fds[0]), "nic"), os.NewFile(uintptr(fds[1]), "switch")
	t.Cleanup(func() { vmEnd.Close(); hostEnd.Close() })
	gc, _ := json.Marshal(guestproto.Config{
		Version: guestproto.Version, Hostname: name,
		NICs:    []guestproto.NIC{{MAC: netaddr.MustParseMAC(mac), Address: netip.MustParsePrefix(ip + "/24")}},
		Command: []string{"sh", "-c", `echo "ID host=$(hostname) mac=$(cat /sys/class/net/eth0/address) ip=$(ip -4 -o addr show dev eth0 | awk '{print $4}') rand=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n') year=$(date +%Y)"; exec sleep 100000`},
	})
	return &hypervisor.Config{
		Name: name, RunDir: shortRunDir(t), CPUs: 1, MemoryMB: 256,
		Kernel: kernel, Initramfs: initrd, Machine: "microvm", Accel: "tcg",
		NICs:       []hypervisor.NIC{{MAC: netaddr.MustParseMAC(mac), FD: vmEnd}},
		GuestAgent: true, GuestConfig: gc, Template: true,
	}
}

// runTemplateVM starts cfg and plays the supervisor's part: when the guest
// parks, Parked, then unpark; it returns the instance and the ID line the
// workload prints.
func runTemplateVM(t *testing.T, d *Driver, cfg *hypervisor.Config) (hypervisor.Instance, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	logPath := filepath.Join(cfg.RunDir, filenames.ConsoleLog)
	var relay *console.Relay
	d.opts.BeforeBoot = withRelay(t, logPath, &relay)
	inst, err := d.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inst.Kill(); inst.Wait(context.Background()); inst.Close() })
	g := inst.Guest()
	if err := g.Send(ctx, []byte(`{"type":"hello"}`)); err != nil {
		t.Fatal(err)
	}
	unparked := false
	for {
		select {
		case line, ok := <-g.Events():
			if !ok {
				t.Fatalf("%s: guest channel closed; console:\n%s", cfg.Name, consoleTail(logPath))
			}
			var m guestproto.Message
			json.Unmarshal(line, &m)
			if m.Type == guestproto.TypeError {
				t.Fatalf("%s: guest error %s; console:\n%s", cfg.Name, line, consoleTail(logPath))
			}
			if m.Status != nil && m.Status.Parked && !unparked {
				unparked = true
				if err := inst.Parked(ctx); err != nil {
					t.Fatal(err)
				}
				body, _ := json.Marshal(guestproto.Unpark{Time: time.Now().UnixNano(), Entropy: []byte("e"),
					Restored: inst.Boot().Kind == hypervisor.BootTemplate})
				msg, _ := json.Marshal(guestproto.Message{Type: guestproto.TypeUnpark, Body: body})
				if err := g.Send(ctx, msg); err != nil {
					t.Fatal(err)
				}
			}
			if m.Type == guestproto.TypeReady || (m.Status != nil && m.Status.Ready) {
				if !unparked {
					t.Fatalf("%s: ready without parking", cfg.Name)
				}
				// The init's log echoes the command; the line the
				// workload prints starts with ID.
				for {
					lines, _ := console.Tail(logPath, 1000)
					for _, l := range lines {
						if strings.HasPrefix(l, "ID host=") {
							return inst, l
						}
					}
					select {
					case <-ctx.Done():
						t.Fatalf("%s: no ID line; console:\n%s", cfg.Name, consoleTail(logPath))
					case <-time.After(50 * time.Millisecond):
					}
				}
			}
		case <-ctx.Done():
			t.Fatalf("%s: not ready; console:\n%s", cfg.Name, consoleTail(logPath))
		}
	}
}

func consoleTail(path string) string {
	lines, _ := console.Tail(path, 30)
	return strings.Join(lines, "\n")
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return fmt.Sprintf("%x", h.Sum(nil))
}

// TestTemplateMakeAndRestore boots a VM that makes the template of its
// shape, then two VMs restored from it: each is its own machine (name,
// MAC, address, random numbers, clock), and the template's files are the
// same bytes afterwards.
func TestTemplateMakeAndRestore(t *testing.T) {
	needVMs(t)
	store := t.TempDir()
	d := New(Options{Templates: store, TemplateShm: t.TempDir()})
	first, id0 := runTemplateVM(t, d, templateVM(t, "tpl-a", "52:54:00:00:aa:01", "10.7.0.2"))
	if b := first.Boot(); b.Kind != hypervisor.BootCold {
		t.Fatalf("first VM of the shape: boot %+v, want cold", b)
	}
	list, err := templates.Open(store).List()
	if err != nil || len(list) != 1 {
		t.Fatalf("templates after the first boot: %v, %v", list, err)
	}
	tpl := list[0]
	t.Logf("template: %d MiB memory file, %d KiB on disk, made in a pause of %s", tpl.Meta.MemBytes>>20, tpl.Disk>>10, tpl.Meta.SaveTook)
	memSum, stateSum := fileSum(t, tpl.Mem()), fileSum(t, tpl.State())

	ids := map[string]bool{id0: true}
	rands := map[string]bool{field(id0, "rand"): true}
	for i, vm := range []struct{ name, mac, ip string }{
		{"tpl-b", "52:54:00:00:bb:02", "10.7.0.3"},
		{"tpl-c", "52:54:00:00:cc:03", "10.7.0.4"},
	} {
		t0 := time.Now()
		inst, id := runTemplateVM(t, d, templateVM(t, vm.name, vm.mac, vm.ip))
		b := inst.Boot()
		t.Logf("clone %d: restored in %s, ready %s after start: %s", i+1, b.Took, time.Since(t0), id)
		if b.Kind != hypervisor.BootTemplate {
			t.Fatalf("%s: boot %+v, want template", vm.name, b)
		}
		for k, want := range map[string]string{"host": vm.name, "mac": vm.mac, "ip": vm.ip + "/24", "year": time.Now().Format("2006")} {
			if got := field(id, k); got != want {
				t.Errorf("%s: %s = %q, want %q (%s)", vm.name, k, got, want, id)
			}
		}
		if rands[field(id, "rand")] {
			t.Errorf("%s: /dev/urandom gave what another clone got: %s", vm.name, id)
		}
		rands[field(id, "rand")] = true
		ids[id] = true
	}
	if fileSum(t, tpl.Mem()) != memSum || fileSum(t, tpl.State()) != stateSum {
		t.Error("restoring changed the template's files")
	}
}

// field returns k's value in an ID line (k=v words).
func field(id, k string) string {
	for _, w := range strings.Fields(id) {
		if v, ok := strings.CutPrefix(w, k+"="); ok {
			return v
		}
	}
	return ""
}

// TestTemplateKey: what differs between two VMs of one shape does not
// change the key; what the snapshot depends on does.
func TestTemplateKey(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, size int) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, make([]byte, size), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	bin, kernel, initrd := write("qemu", 10), write("vmlinuz", 20), write("initrd", 30)
	diskA, diskB := write("a.img", 4096), write("b.img", 4096)
	vm := func(name, run, mac, disk string) *hypervisor.Config {
		return &hypervisor.Config{
			Name: name, RunDir: run, CPUs: 1, MemoryMB: 256, Kernel: kernel, Initramfs: initrd,
			Machine: "microvm", Accel: "tcg", GuestAgent: true, GuestConfig: []byte("{}"), Template: true,
			NICs:  []hypervisor.NIC{{MAC: netaddr.MustParseMAC(mac), DgramLocal: run + "/n0.sock", DgramRemote: "/sw/" + name}},
			Disks: []hypervisor.Disk{{Path: disk, Format: "raw", Serial: "data"}},
		}
	}
	key := func(cfg *hypervisor.Config) string {
		t.Helper()
		cfg = templateConfig(cfg)
		args, err := BuildArgs(cfg, tcgHost)
		if err != nil {
			t.Fatal(err)
		}
		k, err := templateKey(append(args, "-device", "vmgenid,guid=auto"), cfg, bin)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	base := key(vm("a", "/run/a", "52:54:00:00:00:01", diskA))
	if other := key(vm("b", "/run/bb", "52:54:00:00:00:02", diskB)); other != base {
		t.Fatal("two VMs of one shape (other name, run dir, MAC, disk path) got different keys")
	}
	fd := vm("b", "/run/bb", "52:54:00:00:00:02", diskB)
	fd.NICs[0] = hypervisor.NIC{MAC: fd.NICs[0].MAC, FD: os.Stdin}
	if key(fd) != base {
		t.Error("a NIC wired another way (the host's side) changed the key")
	}
	for name, change := range map[string]func(c *hypervisor.Config){
		"memory":    func(c *hypervisor.Config) { c.MemoryMB = 512 },
		"cpus":      func(c *hypervisor.Config) { c.CPUs = 2 },
		"accel":     func(c *hypervisor.Config) { c.Accel = "kvm" },
		"cmdline":   func(c *hypervisor.Config) { c.Cmdline = "loglevel=7" },
		"nics":      func(c *hypervisor.Config) { c.NICs = append(c.NICs, c.NICs[0]) },
		"disk size": func(c *hypervisor.Config) { c.Disks[0].Path = write("big.img", 8192) },
		"read-only": func(c *hypervisor.Config) { c.Disks[0].ReadOnly = true },
	} {
		c := vm("a", "/run/a", "52:54:00:00:00:01", diskA)
		change(c)
		host := tcgHost
		host.KVM = true
		cc := templateConfig(c)
		args, err := BuildArgs(cc, host)
		if err != nil {
			t.Fatal(err)
		}
		k, err := templateKey(append(args, "-device", "vmgenid,guid=auto"), cc, bin)
		if err != nil {
			t.Fatal(err)
		}
		if k == base {
			t.Errorf("%s: same key as the base shape", name)
		}
	}
	// A QEMU upgrade or a rebuilt kernel (another file at the same path)
	// makes a new key: an old template is never restored by another QEMU.
	later := time.Now().Add(time.Hour)
	os.Chtimes(bin, later, later)
	if key(vm("a", "/run/a", "52:54:00:00:00:01", diskA)) == base {
		t.Error("a changed QEMU binary kept the key")
	}
	base = key(vm("a", "/run/a", "52:54:00:00:00:01", diskA))
	os.WriteFile(kernel, make([]byte, 21), 0o600)
	if key(vm("a", "/run/a", "52:54:00:00:00:01", diskA)) == base {
		t.Error("a rebuilt kernel kept the key")
	}
}
