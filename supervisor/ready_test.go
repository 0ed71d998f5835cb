package supervisor

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stackvm/stack/supervisor/api"
	"golang.org/x/sys/unix"
)

// readyHelperEnv makes the test binary act as a process spawned by Ensure:
// it runs ListeningNotifier and prints what it saw.
const readyHelperEnv = "STACK_TEST_READY_HELPER"

func init() {
	if os.Getenv(readyHelperEnv) == "" {
		return
	}
	notify := ListeningNotifier()
	flags, err := unix.FcntlInt(api.ReadyFD, unix.F_GETFD, 0)
	fmt.Printf("notifier=%t env=%q cloexec=%t err=%v\n", notify != nil, os.Getenv(api.ReadyFDEnv), err == nil && flags&unix.FD_CLOEXEC != 0, err)
	if notify != nil {
		notify()
	}
	os.Exit(0)
}

// TestListeningNotifier: a process spawned the way Ensure spawns it writes
// one byte to its readiness pipe, keeps the pipe out of its own children
// (close-on-exec) and out of their environment; any other process gets no
// notifier.
func TestListeningNotifier(t *testing.T) {
	if ListeningNotifier() != nil {
		t.Fatal("a process not spawned by Ensure got a notifier")
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), readyHelperEnv+"=1", api.ReadyFDEnv+"="+strconv.Itoa(api.ReadyFD))
	cmd.ExtraFiles = []*os.File{w}
	var out strings.Builder
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	r.SetReadDeadline(time.Now().Add(time.Minute))
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read readiness pipe: %v", err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper: %v\n%s", err, out.String())
	}
	if string(got) != "\x01" {
		t.Errorf("readiness pipe carried %q, want one byte", got)
	}
	if want := `notifier=true env="" cloexec=true err=<nil>`; strings.TrimSpace(out.String()) != want {
		t.Errorf("helper saw %q, want %q", strings.TrimSpace(out.String()), want)
	}
}
