package qemu

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Support is a yes/no/unknown answer about the host or guest kernel.
type Support int

const (
	Unknown Support = iota
	Yes
	No
)

// Version is a QEMU version.
type Version struct{ Major, Minor, Micro int }

// AtLeast reports whether v >= major.minor.
func (v Version) AtLeast(major, minor int) bool {
	return v.Major > major || (v.Major == major && v.Minor >= minor)
}

// DetectTSCkHz reads the host TSC frequency without dmesg: the "cpu MHz" of
// the first CPU in /proc/cpuinfo. On hosts with constant_tsc (all x86 made
// in the last decade, and the ones we run on) that is the TSC rate, to a few
// kHz; tsc_early_khz only needs to be close, since the kernel refines the
// value later against other clocks. Returns 0 when unknown.
func DetectTSCkHz() int64 {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	return parseCPUInfoKHz(b)
}

func parseCPUInfoKHz(b []byte) int64 {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(k) != "cpu MHz" {
			continue
		}
		mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || !(mhz > 0 && mhz < 100000) {
			return 0
		}
		return int64(mhz*1000 + 0.5)
	}
	return 0
}

// ParseVersion reads the first line of `qemu-system-x86_64 --version`.
func ParseVersion(out []byte) (Version, error) {
	line, _, _ := bytes.Cut(out, []byte("\n"))
	const marker = "version "
	i := bytes.Index(line, []byte(marker))
	if i < 0 {
		return Version{}, fmt.Errorf("parse qemu version: no version in %q", line)
	}
	f := strings.FieldsFunc(string(line[i+len(marker):]), func(r rune) bool { return r == ' ' || r == '(' })
	if len(f) == 0 {
		return Version{}, fmt.Errorf("parse qemu version: no version in %q", line)
	}
	parts := strings.SplitN(f[0], ".", 3)
	var v [3]int
	for j, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil {
			return Version{}, fmt.Errorf("parse qemu version %q: %w", f[0], err)
		}
		v[j] = n
	}
	return Version{v[0], v[1], v[2]}, nil
}

// ProbeKernel decides whether the guest kernel can run on microvm by reading
// its build config, looked for next to it the way Debian installs kernels
// (vmlinuz-<release> beside config-<release>) or as <kernel>.config. Without
// a config file the answer is Unknown, and "auto" then picks microvm for
// initramfs guests (our own guest image's kernel supports it).
func ProbeKernel(kernel string) Support {
	dir, base := filepath.Split(kernel)
	candidates := []string{kernel + ".config"}
	if rel, ok := strings.CutPrefix(base, "vmlinuz-"); ok {
		candidates = append(candidates, filepath.Join(dir, "config-"+rel))
	}
	for _, c := range candidates {
		b, err := os.ReadFile(c)
		if err != nil {
			continue
		}
		return kernelConfigMicrovm(b)
	}
	return Unknown
}

func kernelConfigMicrovm(config []byte) Support {
	// Only three options matter: look them up in place rather than
	// building a map of the config's ~7,000 (this runs on every VM start).
	var mmio, acpi, cmdlineDevices string
	for line := range bytes.Lines(config) {
		k, v, ok := bytes.Cut(bytes.TrimRight(line, "\n"), []byte("="))
		if !ok {
			continue
		}
		switch string(k) {
		case "CONFIG_VIRTIO_MMIO":
			mmio = string(v)
		case "CONFIG_ACPI":
			acpi = string(v)
		case "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES":
			cmdlineDevices = string(v)
		}
	}
	if mmio != "y" && mmio != "m" {
		return No
	}
	if acpi == "y" || cmdlineDevices == "y" {
		return Yes
	}
	return No
}
