package app

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stackvm/stack/guestimage"
	"github.com/stackvm/stack/stacktest"
)

const cpuLimitPermStack = `network "lan" {
  subnet = "10.64.0.0/24"
}

vm "capped" {
  kernel    = "vmlinuz"
  initramfs = "initramfs.cpio"
  cpu_limit = 0.5
  command   = ["sleep", "100000"]
  network "lan" {}
}
`

// TestCPULimitWithoutPermission: stack run as an unprivileged user (nobody,
// through setpriv) cannot create the VM's cgroup, and up fails for that
// VM naming the directory and what is missing; no VMM is left behind.
func TestCPULimitWithoutPermission(t *testing.T) {
	requireVMs(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root to run stack as another user")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv is not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	img, err := guestimage.Ensure(ctx, guestimage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// A directory nobody can use: the binary, the guest image, the stack.
	dir, err := os.MkdirTemp("", "stack-perm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "stack")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/stackvm/stack/cmd/stack").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for src, name := range map[string]string{img.Kernel: "vmlinuz", img.Initramfs: "initramfs.cpio"} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, name), string(b))
	}
	writeFile(t, filepath.Join(dir, "stack.hcl"), cpuLimitPermStack)
	if out, err := exec.Command("chown", "-R", "65534:65534", dir).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v %s", err, out)
	}
	ns := fmt.Sprintf("cpuperm-%d", os.Getpid())
	stack := func(ctx context.Context, args ...string) (string, error) {
		argv := append([]string{"--reuid=65534", "--regid=65534", "--clear-groups", bin, "-p", ns, "--state-dir", filepath.Join(dir, "state")}, args...)
		cmd := exec.CommandContext(ctx, "setpriv", argv...)
		cmd.Dir = dir
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "STACK_CACHE_DIR=" + filepath.Join(dir, "cache")}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if out, err := stack(ctx, "down", "--timeout", "5s"); err != nil {
			t.Logf("cleanup down: %v\n%s", err, out)
		}
		if procs := stacktest.Processes(ns); len(procs) > 0 {
			t.Errorf("QEMU processes of namespace %s left: %v", ns, procs)
		}
	})
	out, err := stack(ctx, "up", "--progress", "plain")
	if err == nil {
		t.Fatalf("up as nobody with cpu_limit succeeded:\n%s", out)
	}
	for _, want := range []string{"vm.capped", "/sys/fs/cgroup/", "permission denied", "cpu_limit needs the right to create cgroups"} {
		if !strings.Contains(out, want) {
			t.Errorf("up's error does not say %q:\n%s", want, out)
		}
	}
	if procs := stacktest.Processes(ns); len(procs) > 0 {
		t.Errorf("the VMM whose cgroup failed still runs: %v", procs)
	}
}
