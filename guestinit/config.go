// Package guestinit is the stack guest init: PID 1 of initramfs-mode VMs.
// It owns bringing the guest up from a guestproto.Config (modules, config
// disk, hostname, /etc files, NICs, mounts), running and supervising the
// workload, reaping orphans, reporting to the host on the agent port, and
// powering the VM off. cmd/stack-init is its main package.
//
// The pure parts (config parsing and rendering, module lists, disk lookup in
// a sysfs tree, agent message handling) build on every platform and are
// unit-tested; the PID 1 parts are Linux-only and are exercised by booting
// the default guest image under QEMU (package guestimage's tests).
package guestinit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/stackvm/stack/guestproto"
	"github.com/stackvm/stack/internal/netaddr"
)

// MaxConfigSize caps how much of the config disk is read.
const MaxConfigSize = 4 << 20

// ParseConfig decodes the config disk's contents: JSON, zero-padded (the
// guest stops at the first NUL). It validates what the init would otherwise
// trip over later, so that a bad config is one clear error.
func ParseConfig(data []byte) (*guestproto.Config, error) {
	if i := bytes.IndexByte(data, 0); i >= 0 {
		data = data[:i]
	}
	data = bytes.TrimSpace(data)
	if len(data) == 0 {
		return nil, errors.New("parse guest config: config disk is empty")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	var cfg guestproto.Config
	if err := dec.Decode(&cfg); err != nil {
		return nil, fmt.Errorf("parse guest config: %w", err)
	}
	if dec.More() {
		return nil, errors.New("parse guest config: trailing data after the JSON object")
	}
	if err := Validate(&cfg); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// Validate checks a config's fields.
func Validate(cfg *guestproto.Config) error {
	if cfg.Version != guestproto.Version {
		return fmt.Errorf("validate guest config: version %d, this init speaks %d", cfg.Version, guestproto.Version)
	}
	if cfg.Hostname != "" && !validHostname(cfg.Hostname) {
		return fmt.Errorf("validate guest config: bad hostname %q", cfg.Hostname)
	}
	if cfg.MachineID != "" && !guestproto.ValidMachineID(cfg.MachineID) {
		return fmt.Errorf("validate guest config: bad machine id %q", cfg.MachineID)
	}
	seen := map[netaddr.MAC]bool{}
	for i, n := range cfg.NICs {
		if n.MAC.IsZero() {
			return fmt.Errorf("validate guest config: nic %d: no mac", i)
		}
		if seen[n.MAC] {
			return fmt.Errorf("validate guest config: nic %d: duplicate mac %s", i, n.MAC)
		}
		seen[n.MAC] = true
		if n.DHCP && n.Address.IsValid() {
			return fmt.Errorf("validate guest config: nic %s: both dhcp and address %s", n.MAC, n.Address)
		}
		if !n.DHCP && !n.Address.IsValid() {
			return fmt.Errorf("validate guest config: nic %s: neither dhcp nor an address", n.MAC)
		}
		if n.Address.IsValid() && !n.Address.Addr().Is4() {
			return fmt.Errorf("validate guest config: nic %s: address %s is not an IPv4 CIDR", n.MAC, n.Address)
		}
		if n.Gateway.IsValid() && !n.Gateway.Is4() {
			return fmt.Errorf("validate guest config: nic %s: gateway %s is not an IPv4 address", n.MAC, n.Gateway)
		}
	}
	for _, d := range cfg.DNS {
		if !d.IsValid() {
			return errors.New("validate guest config: a dns server without an address")
		}
	}
	for _, s := range cfg.Search {
		if !validHostname(s) {
			return fmt.Errorf("validate guest config: bad search domain %q", s)
		}
	}
	for _, h := range cfg.Hosts {
		if !h.IP.IsValid() {
			return fmt.Errorf("validate guest config: hosts entry %q without an address", h.Names)
		}
		if len(h.Names) == 0 {
			return fmt.Errorf("validate guest config: hosts entry %s has no names", h.IP)
		}
		for _, n := range h.Names {
			if !validHostname(n) {
				return fmt.Errorf("validate guest config: hosts entry %s: bad name %q", h.IP, n)
			}
		}
	}
	for i, m := range cfg.Mounts {
		if _, _, err := ParseMountSource(m.Source); err != nil {
			return fmt.Errorf("validate guest config: mount %d: %w", i, err)
		}
		if !path.IsAbs(m.Target) || path.Clean(m.Target) != m.Target || m.Target == "/" {
			return fmt.Errorf("validate guest config: mount %d: target %q must be a clean absolute path other than /", i, m.Target)
		}
		switch m.FSType {
		case "", "ext4", "ext2", "ext3", "9p", "virtiofs", "iso9660":
		default:
			return fmt.Errorf("validate guest config: mount %s: unsupported fstype %q", m.Target, m.FSType)
		}
	}
	if r := cfg.Root; r != nil {
		if r.Image == "" || r.Upper == "" {
			return errors.New("validate guest config: root: image and upper disk serials are required")
		}
		if r.WorkingDir != "" && !path.IsAbs(r.WorkingDir) {
			return fmt.Errorf("validate guest config: root: working directory %q is not absolute", r.WorkingDir)
		}
	}
	if len(cfg.Command) > 0 && cfg.Command[0] == "" {
		return errors.New("validate guest config: command[0] is empty")
	}
	for k := range cfg.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return fmt.Errorf("validate guest config: bad env name %q", k)
		}
	}
	return nil
}

// validHostname accepts dot-separated DNS labels of letters, digits, dashes
// and underscores.
func validHostname(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// ParseMountSource splits "disk:<serial>" and "share:<tag>".
func ParseMountSource(src string) (kind, name string, err error) {
	kind, name, ok := strings.Cut(src, ":")
	if !ok || name == "" || (kind != "disk" && kind != "share") {
		return "", "", fmt.Errorf("mount source %q: want disk:<serial> or share:<tag>", src)
	}
	// virtio-blk serials are at most 20 bytes; tags are path-free names.
	if strings.ContainsAny(name, "/\x00 \n") || (kind == "disk" && len(name) > 20) {
		return "", "", fmt.Errorf("mount source %q: bad name", src)
	}
	return kind, name, nil
}

// RenderHosts is /etc/hosts for cfg: localhost, the VM's own name on
// 127.0.1.1 unless an entry gives it another address, then cfg.Hosts.
func RenderHosts(cfg *guestproto.Config) []byte {
	var b bytes.Buffer
	b.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	own := false
	for _, h := range cfg.Hosts {
		for _, n := range h.Names {
			if n == cfg.Hostname {
				own = true
			}
		}
	}
	if cfg.Hostname != "" && !own {
		fmt.Fprintf(&b, "127.0.1.1\t%s\n", cfg.Hostname)
	}
	for _, h := range cfg.Hosts {
		fmt.Fprintf(&b, "%s\t%s\n", h.IP, strings.Join(h.Names, " "))
	}
	return b.Bytes()
}

// RenderResolvConf is /etc/resolv.conf for the given servers and domains.
func RenderResolvConf(dns []netip.Addr, search []string) []byte {
	var b bytes.Buffer
	for _, d := range dns {
		fmt.Fprintf(&b, "nameserver %s\n", d)
	}
	if len(search) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(search, " "))
	}
	return b.Bytes()
}

// DefaultPath is the workload's PATH unless its Env sets one.
const DefaultPath = "/bin:/sbin:/usr/bin:/usr/sbin"

// WorkloadEnv is the workload's environment: PATH, HOME and TERM defaults,
// overridden by cfg.Env, sorted for determinism.
func WorkloadEnv(env map[string]string) []string {
	m := map[string]string{"PATH": DefaultPath, "HOME": "/root", "TERM": "linux"}
	for k, v := range env {
		m[k] = v
	}
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// ExitCode turns a wait status into a shell-style exit code: the code of a
// normal exit, 128+signal for a signalled process.
func ExitCode(exited bool, code int, signaled bool, sig int) int {
	if signaled {
		return 128 + sig
	}
	if exited {
		return code
	}
	return -1
}

// memInfo reads MemTotal and MemAvailable, in bytes, from a meminfo file
// (zero when it cannot be read).
func memInfo(path string) (total, available uint64) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, 0
	}
	return ParseMemInfo(data)
}

// ParseMemInfo reads MemTotal and MemAvailable ("MemTotal: 251432 kB"
// lines) from /proc/meminfo's text, in bytes.
func ParseMemInfo(data []byte) (total, available uint64) {
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		n, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			continue
		}
		if len(f) > 2 && f[2] == "kB" {
			n <<= 10
		}
		switch f[0] {
		case "MemTotal:":
			total = n
		case "MemAvailable:":
			available = n
		}
	}
	return total, available
}
