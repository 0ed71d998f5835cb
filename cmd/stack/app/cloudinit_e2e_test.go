package app

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/stackfile"
)

// debianImageDir is where scripts/build-debian-image.sh put the Debian
// image (`make debian-image`; the Makefile exports STACK_DEBIAN_IMAGE_DIR).
func debianImageDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("STACK_DEBIAN_IMAGE_DIR")
	if dir == "" {
		dir = filepath.Join(filenames.CacheRoot(), "images", "debian-12")
	}
	for _, f := range []string{"vmlinuz", "initrd.img", "debian-12.raw"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatalf("the Debian test image is missing (%v): run `make debian-image`", err)
		}
	}
	return dir
}

// Each VM reports what it sees from inside on its console: its hostname,
// its address, whether /etc/hosts names its peer, the peer's answer to a
// ping by name, and a stamp kept on the volume (written on first boot only).
const cloudInitStack = `variable "image" {
  type = string
}

variable "share" {
  type = string
}

network "lan" {
  subnet = "10.71.0.0/24"
}

volume "data" {
  size = "64MiB"
}

locals {
  report = <<-EOT
    test -f /data/stamp || cat /proc/sys/kernel/random/uuid > /data/stamp 2>/dev/null
    ok=fail
    for i in $(seq 90); do if ping -c1 -W1 "$PEER" >/dev/null 2>&1; then ok=ok; break; fi; sleep 1; done
    echo "CHECK host=$(hostname) addr=$(ip -4 -o addr show eth0 | awk '{print $4}') hosts=$(grep -c "$PEER" /etc/hosts) ping=$ok stamp=$(cat /data/stamp 2>/dev/null || echo none) marker=$(cat /run/marker)" > /dev/ttyS0
  EOT
}

vm "alpha" {
  kernel    = "${var.image}/vmlinuz"
  initramfs = "${var.image}/initrd.img"
  root_disk  = "${var.image}/debian-12.raw"
  memory_mb  = 512
  machine_id = "0123456789abcdef0123456789abcdef"
  network "lan" {
    ip = "10.71.0.10"
  }
  disk "data" {
    volume     = volume.data
    guest_path = "/data"
  }
  cloud_init {
    user_data = "#cloud-config\n${yamlencode({
      runcmd = [["sh", "-c", "echo from-runcmd > /run/marker"], ["env", "PEER=beta", "sh", "-c", local.report]]
    })}"
  }
  ready {
    timeout = "8m"
  }
}

vm "beta" {
  kernel    = "${var.image}/vmlinuz"
  initramfs = "${var.image}/initrd.img"
  root_disk = "${var.image}/debian-12.raw"
  memory_mb = 512
  network "lan" {}
  shared_dir "share" {
    host_path  = var.share
    guest_path = "/share"
    read_only  = true
  }
  cloud_init {
    user_data = "#cloud-config\n${yamlencode({
      runcmd = [["sh", "-c", "mkdir -p /data; echo from-runcmd > /run/marker"], ["env", "PEER=alpha", "sh", "-c", local.report]]
    })}"
  }
  ready {
    timeout = "8m"
  }
}
`

var checkLine = regexp.MustCompile(`CHECK host=(\S*) addr=(\S*) hosts=(\S*) ping=(\S*) stamp=(\S*) marker=(\S*)`)

func (c *cli) check(t *testing.T, vm string) []string {
	t.Helper()
	r := c.mustRun("logs", vm)
	m := checkLine.FindStringSubmatch(r.stdout)
	if m == nil {
		tail := r.stdout
		if len(tail) > 4000 {
			tail = tail[len(tail)-4000:]
		}
		t.Fatalf("%s printed no CHECK line; console tail:\n%s", vm, tail)
	}
	return m[1:]
}

// TestCloudInitStack boots two VMs from the Debian image built by
// scripts/build-debian-image.sh and checks, inside the guests, what the
// seed configured (beta mounts a read-only shared directory; alpha sets
// its machine_id, beta keeps the derived one across stop and start); then down
// and up again, and the volume kept its data.
func TestCloudInitStack(t *testing.T) {
	requireVMs(t)
	image := debianImageDir(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "stack.hcl")
	writeFile(t, file, cloudInitStack)
	share := t.TempDir()
	writeFile(t, filepath.Join(share, "hello"), "from the host")
	c := newCLI(t, fmt.Sprintf("ci-%d", os.Getpid()))
	args := []string{"-f", file, "--var", "image=" + image, "--var", "share=" + share}

	start := time.Now()
	c.mustRun(append(args, "up", "--progress", "plain")...)
	t.Logf("two cloud-init VMs ready in %s", time.Since(start).Round(time.Second))
	ps := c.ps()
	if ps["alpha"].Addresses["lan"] != "10.71.0.10" || ps["beta"].Addresses["lan"] == "" {
		t.Fatalf("ps: %+v", ps)
	}
	a, b := c.check(t, "alpha"), c.check(t, "beta")
	// host, addr, hosts, ping, stamp, marker
	if a[0] != "alpha" || a[1] != "10.71.0.10/24" || a[2] == "0" || a[3] != "ok" || a[5] != "from-runcmd" {
		t.Fatalf("alpha sees %v", a)
	}
	if b[0] != "beta" || b[1] != ps["beta"].Addresses["lan"]+"/24" || b[2] == "0" || b[3] != "ok" || b[5] != "from-runcmd" {
		t.Fatalf("beta sees %v", b)
	}
	stamp := a[4]
	if len(stamp) < 30 {
		t.Fatalf("alpha wrote no stamp on its volume: %v", a)
	}
	c.checkExecSSH()
	c.checkMachineID("alpha", "0123456789abcdef0123456789abcdef")
	c.checkMachineID("beta", stackfile.DeriveMachineID(c.ns, "beta"))
	c.checkCopy("alpha") // stack cp over SSH
	if r := c.run("exec", "beta", "--", "cat", "/share/hello"); r.code != 0 || r.stdout != "from the host" {
		t.Fatalf("beta reads its shared dir: %+v", r)
	}
	if r := c.run("exec", "beta", "--", "touch", "/share/written"); r.code == 0 {
		t.Fatalf("beta wrote into its read-only shared dir: %+v", r)
	}

	// stop keeps beta's root disk; start boots it again (cloud-init's
	// second boot of the same instance): ready again, its file still
	// there, the shared dir mounted again, exec working.
	c.mustRun("exec", "beta", "--", "sh", "-c", "echo kept > /root/kept")
	c.mustRun("stop", "beta")
	if got := c.ps()["beta"]; got.State != "stopped" {
		t.Fatalf("after stop, ps shows beta as %+v", got)
	}
	start = time.Now()
	c.mustRun("start", "beta", "--progress", "plain")
	t.Logf("beta started again in %s", time.Since(start).Round(time.Second))
	if got := c.ps()["beta"]; got.State != "ready" || got.PID == ps["beta"].PID {
		t.Fatalf("after start, ps shows beta as %+v", got)
	}
	if r := c.run("exec", "beta", "--", "sh", "-c", "cat /root/kept /share/hello"); r.code != 0 || r.stdout != "kept\nfrom the host" {
		t.Fatalf("beta after stop and start: %+v", r)
	}
	c.checkMachineID("beta", stackfile.DeriveMachineID(c.ns, "beta"))

	c.mustRun(append(args, "down")...)
	c.mustRun(append(args, "up", "--progress", "plain")...)
	if again := c.check(t, "alpha"); again[4] != stamp {
		t.Fatalf("the volume lost its data across down and up: stamp %q, then %q", stamp, again[4])
	}
	// down removed the namespace's exec key; the new VMs have a new one.
	if r := c.run("exec", "alpha", "--", "hostname"); r.code != 0 || r.stdout != "alpha\n" {
		t.Fatalf("exec after down and up: %+v", r)
	}
	r := c.mustRun(append(args, "down", "--volumes")...)
	if strings.Contains(r.stderr, "Error") {
		t.Fatalf("down --volumes: %s", r.stderr)
	}
}

// checkExecSSH runs `stack exec` in both VMs, which goes over SSH: as
// root, output and exit codes, the environment, streaming stdin, a TTY.
func (c *cli) checkExecSSH() {
	c.t.Helper()
	start := time.Now()
	for _, vm := range []string{"alpha", "beta"} {
		if r := c.run("exec", vm, "--", "hostname"); r.code != 0 || r.stdout != vm+"\n" || r.stderr != "" {
			c.t.Fatalf("exec %s -- hostname: %+v", vm, r)
		}
	}
	c.t.Logf("exec hostname in both VMs over SSH: %s", time.Since(start).Round(time.Millisecond))
	r := c.run("exec", "-e", "GREETING=it's $me", "beta", "--", "sh", "-c", `id -u; printf '%s\n' "$GREETING" "$1"; echo to-stderr >&2; exit 42`, "sh", "a b'c")
	if r.code != 42 || r.stdout != "0\nit's $me\na b'c\n" || r.stderr != "to-stderr\n" {
		c.t.Fatalf("exec in beta: %+v", r)
	}
	if r := c.run("exec", "alpha", "--", "no-such-command"); r.code != 127 || !strings.Contains(r.stderr, "not found") {
		c.t.Fatalf("exec of a missing command: %+v", r)
	}
	c.checkExecStdin("alpha")
	c.checkExecTTY("beta", "")
}
