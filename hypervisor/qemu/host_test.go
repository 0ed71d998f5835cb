package qemu

import (
	"os"
	"path/filepath"
	"testing"
)

func TestHostParsers(t *testing.T) {
	v, err := ParseVersion([]byte("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright"))
	if err != nil || v != (Version{7, 2, 22}) {
		t.Errorf("ParseVersion = %v, %v", v, err)
	}
	if v, err := ParseVersion([]byte("QEMU emulator version 9.1.0\n")); err != nil || v != (Version{9, 1, 0}) || !v.AtLeast(7, 2) {
		t.Errorf("ParseVersion 9.1.0 = %v, %v", v, err)
	}
	if _, err := ParseVersion([]byte("garbage")); err == nil {
		t.Error("garbage version accepted")
	}
	if (Version{7, 1, 0}).AtLeast(7, 2) {
		t.Error("7.1 >= 7.2")
	}
	info := []byte("processor\t: 0\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2096.016\ncache size\t: 512 KB\nprocessor\t: 1\ncpu MHz\t\t: 1000.0\n")
	if k := parseCPUInfoKHz(info); k != 2096016 {
		t.Errorf("tsc kHz = %d", k)
	}
	if k := parseCPUInfoKHz([]byte("cpu MHz : nan\n")); k != 0 {
		t.Errorf("bad MHz gave %d", k)
	}
	if k := parseCPUInfoKHz(nil); k != 0 {
		t.Errorf("empty gave %d", k)
	}
}

func TestProbeKernel(t *testing.T) {
	dir := t.TempDir()
	k := filepath.Join(dir, "vmlinuz-6.1.0-56-cloud-amd64")
	os.WriteFile(k, []byte("kernel"), 0o644)
	if s := ProbeKernel(k); s != Unknown {
		t.Errorf("no config: %v", s)
	}
	cfgPath := filepath.Join(dir, "config-6.1.0-56-cloud-amd64")
	os.WriteFile(cfgPath, []byte("CONFIG_ACPI=y\nCONFIG_VIRTIO_MMIO=m\n# CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set\n"), 0o644)
	if s := ProbeKernel(k); s != Yes {
		t.Errorf("cloud kernel config: %v", s)
	}
	os.WriteFile(cfgPath, []byte("CONFIG_ACPI=y\n# CONFIG_VIRTIO_MMIO is not set\n"), 0o644)
	if s := ProbeKernel(k); s != No {
		t.Errorf("no mmio: %v", s)
	}
	other := filepath.Join(dir, "bzImage")
	os.WriteFile(other+".config", []byte("CONFIG_VIRTIO_MMIO=y\nCONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y\n"), 0o644)
	if s := ProbeKernel(other); s != Yes {
		t.Errorf("<kernel>.config: %v", s)
	}
}
