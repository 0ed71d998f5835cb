package app

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// attrsStack sets attributes whose effect no other VM test reads in a
// guest: machine, cmdline, machine_id, a network's gateway, a raw volume
// without guest_path, an exec readiness probe.
const attrsStack = `network "lan" {
  subnet  = "10.79.0.0/24"
  gateway = "10.79.0.254"
}

volume "blob" {
  size   = "3MiB"
  format = "raw"
}

vm "box" {
  machine    = "q35"
  hypervisor = "qemu"
  cmdline    = "stack.attrs=on"
  machine_id = "0123456789abcdef0123456789abcdef"
  command    = ["sh", "-c", "sleep 2; touch /tmp/ok; exec sleep 3600"]
  network "lan" {}
  disk "blob" {
    volume = volume.blob
  }
  ready {
    exec = ["test", "-e", "/tmp/ok"]
  }
}
`

// TestAttributesInGuest boots one VM and reads, inside it, what each of
// attrsStack's attributes should have done.
func TestAttributesInGuest(t *testing.T) {
	requireVMs(t)
	c := newCLI(t, fmt.Sprintf("attrs-%d", os.Getpid()))
	file := filepath.Join(t.TempDir(), "stack.hcl")
	writeFile(t, file, attrsStack)
	r := c.mustRun("-f", file, "up", "--progress", "plain")
	// The exec probe: up returns once the command exits 0, that is once
	// the workload made /tmp/ok (2 s after it started; the guest's own
	// report comes at its start).
	if want := `ready: ["test" "-e" "/tmp/ok"] exited 0`; !strings.Contains(r.stderr, want) {
		t.Errorf("up does not say %q:\n%s", want, r.stderr)
	}
	if r := c.run("exec", "box", "--", "test", "-e", "/tmp/ok"); r.code != 0 {
		t.Errorf("box was ready before its exec probe could pass: %+v", r)
	}
	if st := c.ps()["box"]; st.State != "ready" {
		t.Fatalf("box: %+v", st)
	}
	for _, check := range []struct{ what, cmd, want string }{
		// q35 has DMI tables (microvm, the default on this image, has none).
		{"machine = q35", "cat /sys/class/dmi/id/product_name", "Q35"},
		{"cmdline", "cat /proc/cmdline", "stack.attrs=on"},
		{"machine_id", "cat /etc/machine-id", "0123456789abcdef0123456789abcdef"},
		{"network gateway", "ip route show default", "via 10.79.0.254"},
		// The raw volume: a 3 MiB block device (6144 sectors) that nothing
		// mounted.
		{"raw volume", "for d in /sys/block/vd*; do cat $d/size; done; grep -c /dev/vd /proc/mounts || true", "6144"},
	} {
		r := c.run("exec", "box", "--", "sh", "-c", check.cmd)
		if r.code != 0 || !strings.Contains(r.stdout, check.want) {
			t.Errorf("%s: %q in the guest printed %q (exit %d, %s), want %q", check.what, check.cmd, r.stdout, r.code, r.stderr, check.want)
		}
	}
	if r := c.run("exec", "box", "--", "sh", "-c", "grep /dev/vd /proc/mounts"); r.code == 0 {
		t.Errorf("a raw volume is mounted: %s", r.stdout)
	}
}

// TestReadyExecProbeFails: a VM whose exec probe never exits 0 is not
// ready; up fails at the probe's timeout and says what it waited for.
func TestReadyExecProbeFails(t *testing.T) {
	requireVMs(t)
	c := newCLI(t, fmt.Sprintf("rexec-%d", os.Getpid()))
	file := filepath.Join(t.TempDir(), "stack.hcl")
	writeFile(t, file, `network "lan" {
  subnet = "10.80.0.0/24"
}

vm "never" {
  command = ["sleep", "3600"]
  network "lan" {}
  ready {
    exec    = ["false"]
    timeout = "15s"
  }
}
`)
	r := c.run("-f", file, "up", "--progress", "plain")
	if want := `not ready after 15s (waiting for ["false"] to exit 0)`; r.code != 1 || !strings.Contains(r.stderr, want) {
		t.Fatalf("up with a failing exec probe: exit %d, want 1 and %q:\n%s", r.code, want, r.stderr)
	}
	if st := c.ps()["never"]; st.State != "failed" {
		t.Fatalf("never: %+v", st)
	}
}
