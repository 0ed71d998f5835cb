package qemu

import (
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/internal/netaddr"
)

var update = flag.Bool("update", false, "rewrite golden files")

const runDir = "/run/user/0/stack/0123456789ab/vm-ba9876543210"

func baseConfig() *hypervisor.Config {
	return &hypervisor.Config{
		Name:        "web-0",
		RunDir:      runDir,
		CPUs:        1,
		MemoryMB:    256,
		Kernel:      "/cache/guest/k/vmlinuz",
		Initramfs:   "/cache/guest/k/initramfs.cpio.gz",
		Cmdline:     "quiet",
		Machine:     "auto",
		Accel:       "auto",
		GuestAgent:  true,
		GuestConfig: []byte(`{"version":1,"hostname":"web-0"}`),
		NICs: []hypervisor.NIC{{
			MAC:        netaddr.MustParseMAC("52:54:00:12:34:56"),
			DgramLocal: runDir + "/n0.sock", DgramRemote: "/run/user/0/stack/0123456789ab/net-aaaaaaaaaaaa/p0.sock",
		}},
	}
}

var tcgHost = HostInfo{TSCkHz: 2096016, Sandbox: true}

func TestBuildArgsGolden(t *testing.T) {
	cases := []struct {
		name string
		host HostInfo
		cfg  func(c *hypervisor.Config)
	}{
		{"initramfs-microvm-tcg", tcgHost, func(c *hypervisor.Config) {}},
		{"initramfs-q35-tcg", tcgHost, func(c *hypervisor.Config) { c.Machine = "q35" }},
		{"initramfs-microvm-kvm", HostInfo{KVM: true, TSCkHz: 2096016, Sandbox: true}, func(c *hypervisor.Config) { c.CPUs = 2; c.MemoryMB = 512 }},
		// accel set on the VM (or by STACK_ACCEL): kvm where it works,
		// and tcg where KVM works too.
		{"accel-kvm", HostInfo{KVM: true, TSCkHz: 2096016, Sandbox: true}, func(c *hypervisor.Config) { c.Accel = "kvm" }},
		{"accel-tcg", HostInfo{KVM: true, TSCkHz: 2096016, Sandbox: true}, func(c *hypervisor.Config) { c.Accel = "tcg" }},
		{"kernel-without-mmio-gets-q35", HostInfo{TSCkHz: 2096016, GuestMicrovm: No}, func(c *hypervisor.Config) {}},
		{"tsc-unknown", HostInfo{}, func(c *hypervisor.Config) { c.Cmdline = "" }},
		{"cloudinit-q35", tcgHost, func(c *hypervisor.Config) {
			c.Name = "db"
			c.Initramfs = "/images/initrd.img"
			c.Cmdline = "root=/dev/vda1 ro"
			c.GuestAgent = false
			c.GuestConfig = nil
			c.Disks = []hypervisor.Disk{
				{Path: "/state/ns/vms/db/root.qcow2", Format: "qcow2", Serial: "root"},
				{Path: "/state/ns/vms/db/seed.iso", Format: "raw", ReadOnly: true, Serial: "cidata"},
				{Path: "/state/ns/volumes/pgdata.img", Format: "raw", Serial: "vol-pgdata"},
			}
			c.NICs = []hypervisor.NIC{{MAC: netaddr.MustParseMAC("52:54:00:00:00:02"), StreamPath: "/run/sw/p1.sock"}}
		}},
		// A root disk: first, and root= unless the cmdline has one; auto
		// picks q35 for a VM without the agent channel.
		{"root-disk", tcgHost, func(c *hypervisor.Config) {
			c.Name, c.GuestAgent, c.GuestConfig, c.Initramfs = "db", false, nil, "/images/initrd.img"
			c.Root = &hypervisor.Disk{Path: "/state/ns/vms/db/root.qcow2", Format: "qcow2", Serial: "root"}
			c.Disks = []hypervisor.Disk{{Path: "/state/ns/vms/db/seed.iso", Format: "raw", ReadOnly: true, Serial: "cidata"}}
		}},
		{"root-disk-own-root", tcgHost, func(c *hypervisor.Config) {
			c.Name, c.GuestAgent, c.GuestConfig, c.Cmdline = "db", false, nil, "root=LABEL=x ro"
			c.Root = &hypervisor.Disk{Path: "/state/ns/vms/db/root.qcow2", Format: "qcow2", Serial: "root"}
		}},
		{"nics-all-transports", tcgHost, func(c *hypervisor.Config) {
			c.NICs = []hypervisor.NIC{
				{MAC: netaddr.MustParseMAC("52:54:00:00:00:01"), DgramLocal: runDir + "/n0.sock", DgramRemote: "/run/sw/p0.sock"},
				{MAC: netaddr.MustParseMAC("52:54:00:00:00:02"), StreamPath: "/run/sw/p1.sock"},
				{MAC: netaddr.MustParseMAC("52:54:00:00:00:03"), FD: os.Stdin},
				{MAC: netaddr.MustParseMAC("52:54:00:00:00:04"), TAP: "stk0"},
				{MAC: netaddr.MustParseMAC("52:54:00:00:00:05"), FD: os.Stdout},
			}
		}},
		{"shared-dirs", tcgHost, func(c *hypervisor.Config) {
			c.Machine = "q35"
			c.SharedDirs = []hypervisor.SharedDir{
				{Tag: "src", HostPath: "/home/u/my,project/src", ReadOnly: true},
				{Tag: "out", HostPath: "/home/u/out"},
			}
		}},
		{"shared-dirs-9p-as-root", HostInfo{TSCkHz: 2096016, Sandbox: true, Root: true}, func(c *hypervisor.Config) {
			c.Machine = "q35"
			c.SharedDirs = []hypervisor.SharedDir{
				{Tag: "src", HostPath: "/home/u/src", ReadOnly: true},
				{Tag: "out", HostPath: "/home/u/out"},
			}
		}},
		{"shared-dirs-virtiofs-microvm", HostInfo{TSCkHz: 2096016, Virtiofsd: "/usr/lib/qemu/virtiofsd"}, func(c *hypervisor.Config) {
			c.SharedDirs = []hypervisor.SharedDir{
				{Tag: "src", HostPath: "/home/u/my,project/src", ReadOnly: true},
				{Tag: "out", HostPath: "/home/u/out"},
			}
		}},
		{"shared-dirs-virtiofs-q35", HostInfo{TSCkHz: 2096016, Virtiofsd: "/usr/lib/qemu/virtiofsd"}, func(c *hypervisor.Config) {
			c.Machine = "q35"
			c.SharedDirs = []hypervisor.SharedDir{{Tag: "src", HostPath: "/home/u/src"}}
		}},
		{"virtiofsd-without-shared-dirs", HostInfo{TSCkHz: 2096016, Virtiofsd: "/usr/lib/qemu/virtiofsd"}, func(c *hypervisor.Config) {}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := baseConfig()
			c.cfg(cfg)
			args, err := BuildArgs(cfg, c.host)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, c.name, strings.Join(args, "\n")+"\n")
		})
	}
}

// golden compares an argv, one argument a line, with testdata/NAME.args.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".args")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden (run with -update to create): %v", err)
	}
	if got != string(want) {
		t.Errorf("args differ from %s (run with -update if intended):\n%s", path, got)
	}
}

func TestBuildArgsRejects(t *testing.T) {
	cases := map[string]func(c *hypervisor.Config){
		"no name":          func(c *hypervisor.Config) { c.Name = "" },
		"relative run dir": func(c *hypervisor.Config) { c.RunDir = "run" },
		"long run dir":     func(c *hypervisor.Config) { c.RunDir = "/" + strings.Repeat("x", 100) },
		"zero cpus":        func(c *hypervisor.Config) { c.CPUs = 0 },
		"tiny memory":      func(c *hypervisor.Config) { c.MemoryMB = 8 },
		"relative kernel":  func(c *hypervisor.Config) { c.Kernel = "vmlinuz" },
		"bad machine":      func(c *hypervisor.Config) { c.Machine = "pc" },
		"kvm without kvm":  func(c *hypervisor.Config) { c.Accel = "kvm" },
		"bad accel":        func(c *hypervisor.Config) { c.Accel = "hvf" },
		"bad disk format":  func(c *hypervisor.Config) { c.Disks = []hypervisor.Disk{{Path: "/d", Format: "vmdk"}} },
		"long serial": func(c *hypervisor.Config) {
			c.Disks = []hypervisor.Disk{{Path: "/d", Format: "raw", Serial: strings.Repeat("s", 21)}}
		},
		"serial with comma": func(c *hypervisor.Config) { c.Disks = []hypervisor.Disk{{Path: "/d", Format: "raw", Serial: "a,b"}} },
		"reserved serial": func(c *hypervisor.Config) {
			c.Disks = []hypervisor.Disk{{Path: "/d", Format: "raw", Serial: "stack-config"}}
		},
		"nic two transports": func(c *hypervisor.Config) { c.NICs[0].TAP = "tap0" },
		"nic no transport": func(c *hypervisor.Config) {
			c.NICs = []hypervisor.NIC{{MAC: netaddr.MustParseMAC("52:54:00:00:00:01")}}
		},
		"nic half dgram":  func(c *hypervisor.Config) { c.NICs[0].DgramRemote = "" },
		"no mac":          func(c *hypervisor.Config) { c.NICs[0].MAC = netaddr.MAC{} },
		"multicast mac":   func(c *hypervisor.Config) { c.NICs[0].MAC = netaddr.MustParseMAC("01:00:5e:00:00:01") },
		"bad tag":         func(c *hypervisor.Config) { c.SharedDirs = []hypervisor.SharedDir{{Tag: "a,b", HostPath: "/x"}} },
		"newline cmdline": func(c *hypervisor.Config) { c.Cmdline = "a\nb" },
	}
	for name, mut := range cases {
		cfg := baseConfig()
		mut(cfg)
		if args, err := BuildArgs(cfg, tcgHost); err == nil {
			t.Errorf("%s: accepted: %q", name, args)
		}
	}
}

func FuzzBuildArgs(f *testing.F) {
	f.Add("web", "quiet", "/k", "52:54:00:00:00:01", "raw", "ser", "tag", "/p", "auto", "auto", 1, 256)
	f.Add("a,b", "x=y,z", "/k,", "zz", "qcow2", "", "", "", "q35", "kvm", 0, 0)
	f.Fuzz(func(t *testing.T, name, cmdline, kernel, mac, format, serial, tag, path, machine, accel string, cpus, mem int) {
		hw, _ := netaddr.ParseMAC(mac) // a bad one is the zero MAC, which BuildArgs refuses
		cfg := &hypervisor.Config{
			Name: name, RunDir: "/run/x", CPUs: cpus, MemoryMB: mem, Kernel: kernel, Cmdline: cmdline,
			Machine: machine, Accel: accel, GuestAgent: true, GuestConfig: []byte("{}"),
			NICs:       []hypervisor.NIC{{MAC: hw, TAP: "t0"}},
			Disks:      []hypervisor.Disk{{Path: path, Format: format, Serial: serial}},
			SharedDirs: []hypervisor.SharedDir{{Tag: tag, HostPath: path}},
		}
		args, err := BuildArgs(cfg, tcgHost)
		if err != nil {
			return
		}
		// Every option value that QEMU parses as key=value lists must not
		// let a config value inject another key: after undoing comma
		// escapes, each -drive/-device/-netdev/-fsdev/-chardev value has
		// only the keys we put there.
		for i := 0; i+1 < len(args); i++ {
			switch args[i] {
			case "-drive", "-device", "-netdev", "-fsdev", "-chardev":
				for _, kv := range splitOpts(args[i+1]) {
					k, _, _ := strings.Cut(kv, "=")
					if !knownKey[k] && !strings.HasPrefix(k, "virtio-") && k != "virtserialport" && k != "socket" && k != "tap" && k != "local" && k != "dgram" && k != "stream" {
						t.Fatalf("unexpected key %q in %q", k, args[i+1])
					}
				}
			}
		}
	})
}

var knownKey = map[string]bool{
	"if": true, "id": true, "file": true, "format": true, "readonly": true, "discard": true,
	"drive": true, "serial": true, "netdev": true, "mac": true, "fsdev": true, "mount_tag": true,
	"local.type": true, "local.path": true, "remote.type": true, "remote.path": true, "local.str": true,
	"server": true, "addr.type": true, "addr.path": true, "ifname": true, "script": true, "downscript": true,
	"path": true, "security_model": true, "wait": true, "bus": true, "chardev": true, "name": true,
}

// splitOpts splits a QEMU option string at single commas (",," is an
// escaped comma).
func splitOpts(s string) []string {
	var out []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			if i+1 < len(s) && s[i+1] == ',' {
				cur.WriteByte(',')
				i++
				continue
			}
			out = append(out, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(s[i])
	}
	return append(out, cur.String())
}

func TestConfigDiskImage(t *testing.T) {
	for _, n := range []int{0, 1, 511, 512, 513} {
		img := ConfigDiskImage(make([]byte, n))
		if len(img)%512 != 0 || len(img) < n || len(img) == 0 || len(img)-n >= 512 && n > 0 {
			t.Errorf("len %d -> %d", n, len(img))
		}
	}
	img := ConfigDiskImage([]byte(`{"a":1}`))
	if string(img[:7]) != `{"a":1}` || img[7] != 0 || img[511] != 0 {
		t.Error("config not copied then zero-padded")
	}
}

// The probe says yes for this host's QEMU, built with seccomp (Debian's
// is), and no for a QEMU that refuses -sandbox.
func TestProbeSandbox(t *testing.T) {
	if _, err := exec.LookPath(DefaultBinary); err != nil {
		t.Skip("no QEMU installed")
	}
	if !ProbeSandbox(DefaultBinary) {
		t.Errorf("%s does not take -sandbox %s", DefaultBinary, SandboxArg)
	}
	fake := filepath.Join(t.TempDir(), "qemu")
	script := "#!/bin/sh\necho 'qemu-system-x86_64: -sandbox is not supported by this QEMU build.' >&2\nexit 1\n"
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if ProbeSandbox(fake) {
		t.Error("a QEMU that refuses -sandbox passed the probe")
	}
}
