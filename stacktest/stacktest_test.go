package stacktest

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stackvm/stack"
	"github.com/stackvm/stack/internal/filenames"
)

const childEnv = "STACKTEST_CHILD"

const solo = `network "lan" {
  subnet = "10.57.0.0/24"
}

vm "solo" {
  command = ["sleep", "100000"]
  network "lan" {}
}
`

// TestChild is the test binary's child role for TestVMsDieWithTestBinary:
// it brings a stack up, says so, and waits to be killed.
func TestChild(t *testing.T) {
	file := os.Getenv(childEnv)
	if file == "" {
		t.Skip("runs only as TestVMsDieWithTestBinary's child")
	}
	s := Up(t, file)
	// The kill skips this test's cleanup: the parent removes its
	// temporary directories (the state dir among them) instead.
	os.Stdout.WriteString("UP " + s.Project.Stack.Namespace + " " + filepath.Dir(t.TempDir()) + "\n")
	time.Sleep(10 * time.Minute)
}

// TestVMsDieWithTestBinary: a test binary killed by SIGKILL (no cleanup
// runs) leaves no VM behind: its namespace's supervisor watches it.
func TestVMsDieWithTestBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM")
	}
	file := filepath.Join(t.TempDir(), "stack.hcl")
	if err := os.WriteFile(file, []byte(solo), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestChild$", "-test.v")
	cmd.Env = append(os.Environ(), childEnv+"="+file)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ns, childTmp := "", ""
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "UP "); ok {
			ns, childTmp, _ = strings.Cut(rest, " ")
			break
		}
	}
	if childTmp != "" {
		t.Cleanup(func() { os.RemoveAll(childTmp) })
	}
	if ns == "" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatal("the child test never brought its stack up")
	}
	if n := len(Processes(ns)); n != 1 {
		t.Fatalf("%d QEMU processes for %s while the child runs, want 1", n, ns)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for len(Processes(ns)) > 0 {
		if ctx.Err() != nil {
			for _, pid := range Processes(ns) {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			t.Fatalf("VMs of %s outlived the killed test binary by a minute", ns)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The supervisor tears down and exits after its VMs: no socket or
	// runtime directory of the namespace stays behind.
	dir := filenames.NamespaceRuntime(filenames.RuntimeRoot(), ns)
	for {
		if _, err := os.Stat(dir); os.IsNotExist(err) {
			break
		}
		if ctx.Err() != nil {
			entries, _ := os.ReadDir(dir)
			t.Fatalf("runtime directory %s outlived the killed test binary by a minute (%d entries)", dir, len(entries))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestNamespaceIsALabel(t *testing.T) {
	ns := Namespace(t)
	if len(ns) > 63 || strings.ToLower(ns) != ns || strings.ContainsAny(ns, "_/ ") {
		t.Fatalf("namespace %q is not a DNS label", ns)
	}
	t.Run("sub/test with spaces", func(t *testing.T) {
		if Namespace(t) == ns {
			t.Fatal("subtests share a namespace")
		}
	})
}

// TestStopStart drives one VM through the handle: typed addresses, logs
// followed across a stop and a start, Wait on a stopped VM, and exec after
// the start. The VM has a shared directory, served again after the start
// (virtio-fs: its daemon ended with the first QEMU).
func TestStopStart(t *testing.T) {
	file := filepath.Join(t.TempDir(), "stack.hcl")
	share := t.TempDir()
	if err := os.WriteFile(filepath.Join(share, "hello"), []byte("from the host"), 0o644); err != nil {
		t.Fatal(err)
	}
	src := strings.Replace(solo, `command = ["sleep", "100000"]`,
		`command = ["sh", "-c", "echo solo-up; exec sleep 100000"]
  shared_dir "share" {
    host_path  = "`+share+`"
    guest_path = "/share"
  }`, 1)
	if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	s := Up(t, file)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	vm := s.VM("solo")
	if ip := vm.Handle.Addresses["lan"]; !ip.IsValid() || ip.String() != vm.Addresses["lan"] || vm.Handle.Address != "vm.solo" {
		t.Fatalf("handle %+v does not match the VM's addresses %v", vm.Handle, vm.Addresses)
	}
	logs, err := vm.Handle.Logs(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()

	vm.Stop(ctx)
	if st := vm.Status(); st.State != "stopped" || st.ExitCode == nil {
		t.Fatalf("after Stop: %+v, want stopped with an exit code", st)
	}
	var nre *stack.NotReadyError
	if err := vm.Wait(ctx); !errors.As(err, &nre) || nre.State != "stopped" {
		t.Fatalf("Wait on a stopped VM: %v, want a NotReadyError saying stopped", err)
	}
	vm.Start(ctx)
	if err := vm.Wait(ctx); err != nil {
		t.Fatalf("Wait after Start: %v", err)
	}
	if r := vm.Exec(ctx, "cat", "/proc/uptime"); r.Code != 0 {
		t.Fatalf("exec after Start: %+v", r)
	}
	if r := vm.Exec(ctx, "sh", "-c", "cat /share/hello && echo back > /share/back"); r.Code != 0 || r.Stdout != "from the host" {
		t.Fatalf("shared dir after Start: %+v, want the host's file", r)
	}
	if b, err := os.ReadFile(filepath.Join(share, "back")); err != nil || string(b) != "back\n" {
		t.Fatalf("the guest's write to the shared dir: %q, %v", b, err)
	}
	// Both boots' workloads, in order, on the followed console.
	sc := bufio.NewScanner(logs)
	for seen := 0; seen < 2; {
		if !sc.Scan() {
			t.Fatalf("followed console ended after %d of 2 workload starts: %v", seen, sc.Err())
		}
		if strings.Contains(sc.Text(), "solo-up") {
			seen++
		}
	}
}
