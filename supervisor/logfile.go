package supervisor

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/stackvm/stack/hypervisor/console"
	"github.com/stackvm/stack/internal/filenames"
)

// supervisorLogMax caps supervisor.log: a write that would take it over
// moves it to supervisor.log.1 (replacing the one before) and starts a new
// one, so the supervisor's log takes at most twice this on disk whatever
// its VMs' guests do.
const supervisorLogMax = 4 << 20

// openLog opens the namespace's supervisor log at path, capped at max
// bytes. The spawner points the process's stdout and stderr at the same
// file, for what does not go through the logger (a panic's trace); they
// follow the log to each new file, so that they are capped too and never
// write to a file rotated away.
func openLog(path string, max int64) (io.Writer, error) {
	l, err := console.OpenLog(path, max)
	if err != nil {
		return nil, fmt.Errorf("open supervisor log: %w", err)
	}
	if sameFile(os.Stderr, path) {
		l.Rotated = func(f *os.File) {
			unix.Dup3(int(f.Fd()), 1, 0)
			unix.Dup3(int(f.Fd()), 2, 0)
		}
	}
	return l, nil
}

// supervisorLogPath is the namespace's supervisor log.
func supervisorLogPath(stateRoot, namespace string) string {
	return filepath.Join(filenames.NamespaceState(stateRoot, namespace), filenames.SupervisorLog)
}

// sameFile reports whether f is the file at path.
func sameFile(f *os.File, path string) bool {
	a, err := f.Stat()
	if err != nil {
		return false
	}
	b, err := os.Stat(path)
	return err == nil && os.SameFile(a, b)
}
