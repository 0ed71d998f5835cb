package supervisor

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stackvm/stack/hypervisor/proc"
	"github.com/stackvm/stack/internal/filenames"
)

// fakeVMM starts a process whose command line names runDir as a VMM's
// does, and writes its pid file there as the driver does.
func fakeVMM(t *testing.T, runDir string, names bool) *exec.Cmd {
	t.Helper()
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		t.Fatal(err)
	}
	arg := "elsewhere"
	if names {
		arg = "path=" + runDir + "/qmp.sock"
	}
	cmd := exec.Command("sh", "-c", "while :; do sleep 1; done", "sh", arg)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if err := os.WriteFile(filepath.Join(runDir, filenames.PIDFile), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return cmd
}

func TestKillOrphanVMMs(t *testing.T) {
	run, err := os.MkdirTemp("", "sv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(run) })
	s := New(Options{Namespace: "t", StateRoot: t.TempDir(), RuntimeRoot: run, Driver: &fakeDriver{}})
	orphan := fakeVMM(t, filenames.VMRuntime(run, "t", "a"), true)
	adopted := fakeVMM(t, filenames.VMRuntime(run, "t", "b"), true)
	stranger := fakeVMM(t, filenames.VMRuntime(run, "t", "c"), false) // a reused pid
	v := &vmRun{}
	v.st.PID = adopted.Process.Pid
	s.vms["vm.b"] = v

	s.killOrphanVMMs()

	exited := make(chan struct{})
	go func() { orphan.Wait(); close(exited) }()
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Fatal("the VMM without a record still runs")
	}
	for name, c := range map[string]*exec.Cmd{"the adopted VMM": adopted, "a process that is no VMM of ours": stranger} {
		st, err := proc.StartTime(c.Process.Pid)
		if err != nil || !proc.Alive(c.Process.Pid, st) {
			t.Errorf("%s was killed", name)
		}
	}
}
