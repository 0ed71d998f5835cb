package supervisor

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stackvm/stack/hypervisor/console"
)

// The supervisor log stays within its cap however much is logged, and the
// process's stderr (which the spawner points at the log, for a panic's
// trace) follows it to the new file. Run in a child process whose stderr
// is the log, as a spawned supervisor's is.
func TestSupervisorLogRotates(t *testing.T) {
	const capBytes = 64 << 10
	if path := os.Getenv("STACK_TEST_SUPERVISOR_LOG"); path != "" {
		w, err := openLog(path, capBytes)
		if err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		log := slog.New(slog.NewTextHandler(w, nil))
		for i := range 10_000 { // about 1 MB
			log.Info("the workload exited with status 1", "address", "vm.mal", "n", i)
		}
		fmt.Fprintln(os.Stderr, "written-to-stderr-after-rotations")
		os.Exit(0)
	}
	path := filepath.Join(t.TempDir(), "supervisor.log")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestSupervisorLogRotates$")
	cmd.Env = append(os.Environ(), "STACK_TEST_SUPERVISOR_LOG="+path)
	cmd.Stdout, cmd.Stderr = f, f
	err = cmd.Run()
	f.Close()
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	cur, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	old, err := os.ReadFile(console.RotatedPath(path))
	if err != nil {
		t.Fatalf("no rotated log: %v", err)
	}
	t.Logf("about 1 MB logged: supervisor.log has %d bytes, supervisor.log.1 %d", len(cur), len(old))
	if len(cur) > capBytes || len(old) > capBytes {
		t.Errorf("the log files have %d and %d bytes, over the cap of %d", len(cur), len(old), capBytes)
	}
	if !strings.Contains(string(cur), "written-to-stderr-after-rotations") {
		t.Errorf("stderr did not follow the log to its new file; the log ends %q", cur[max(0, len(cur)-200):])
	}
}
