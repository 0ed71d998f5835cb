package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/stackvm/stack/hypervisor/proc"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/state"
	"github.com/stackvm/stack/supervisor/api"
	"github.com/stackvm/stack/supervisor/client"
)

// killWait bounds the wait for killed processes to be gone.
const killWait = 30 * time.Second

// recordedProcess is a process of the namespace as a record names it: its
// pid and start time, so that a pid reused by another process is never
// killed.
type recordedProcess struct {
	what      string
	pid       int
	startTime uint64
}

// recordedVMMs lists the VMMs that the namespace's records name: the
// supervisor's records of its VMs and warm-pool members, and the state
// file's (st, nil when it could not be read).
func (e *Engine) recordedVMMs(st *state.State) []recordedProcess {
	seen := map[int]bool{}
	var out []recordedProcess
	add := func(what string, p *api.Process) {
		if p != nil && p.PID > 0 && !seen[p.PID] {
			seen[p.PID] = true
			out = append(out, recordedProcess{what, p.PID, p.StartTime})
		}
	}
	nsDir := filenames.NamespaceState(e.opts.StateRoot, e.opts.Namespace)
	vms, _ := filepath.Glob(filepath.Join(nsDir, filenames.VMDir, "*", filenames.VMRecord))
	for _, path := range vms {
		if r, err := api.ReadRecord(filepath.Dir(path)); err == nil {
			add("the VMM of "+filepath.Base(filepath.Dir(path)), r.Process)
		}
	}
	pool, _ := filepath.Glob(filepath.Join(nsDir, filenames.PoolDir, "*.json"))
	for _, path := range pool {
		var p api.Process
		if data, err := os.ReadFile(path); err == nil && json.Unmarshal(data, &p) == nil {
			add("the VMM of pool member "+strings.TrimSuffix(filepath.Base(path), ".json"), &p)
		}
	}
	if st != nil {
		for _, vm := range st.VMs {
			if p := vm.Process; p != nil {
				add("the VMM of "+vm.Name, &api.Process{PID: p.PID, StartTime: p.StartTime})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].pid < out[j].pid })
	return out
}

// killWedged ends a supervisor that does not answer (na) and the VMMs the
// namespace's records name, each only while it is the recorded process,
// after saying what it kills; it returns once they are gone. The next
// supervisor re-adopts nothing of theirs and down goes on from the
// records.
func (e *Engine) killWedged(ctx context.Context, na *client.NoAnswerError, st *state.State, opts DownOptions) error {
	victims := e.recordedVMMs(st)
	if na.PID != 0 {
		victims = append([]recordedProcess{{"the supervisor", na.PID, na.StartTime}}, victims...)
	}
	var alive []recordedProcess
	var names []string
	for _, v := range victims {
		if proc.Alive(v.pid, v.startTime) {
			alive = append(alive, v)
			names = append(names, fmt.Sprintf("%s (pid %d)", v.what, v.pid))
		}
	}
	if na.PID == 0 {
		opts.warn("The supervisor of namespace %q does not answer and its process is unknown: end it yourself if it still runs.", e.opts.Namespace)
	}
	if len(alive) == 0 {
		return nil
	}
	opts.warn("--force: the supervisor did not answer; killing %s.", strings.Join(names, ", "))
	for _, v := range alive {
		if err := syscall.Kill(v.pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("kill %s (pid %d): %w", v.what, v.pid, err)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, killWait)
	defer cancel()
	for _, v := range alive {
		for proc.Alive(v.pid, v.startTime) {
			select {
			case <-wctx.Done():
				return fmt.Errorf("%s (pid %d) is still there after SIGKILL: %w", v.what, v.pid, wctx.Err())
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	return nil
}
