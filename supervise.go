package stack

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/hypervisor/proc"
	"github.com/stackvm/stack/hypervisor/qemu"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/supervisor"
)

// superviseEnv carries the supervisor's options when a program that links
// package stack re-executes itself as a namespace's supervisor. The same
// mechanism serves the CLI and test binaries (stacktest), which have no
// `stack` command to call.
const superviseEnv = "STACK_SUPERVISE"

type superviseArgs struct {
	Namespace      string `json:"namespace"`
	StateRoot      string `json:"state_root"`
	RuntimeRoot    string `json:"runtime_root"`
	OwnerPID       int    `json:"owner_pid,omitempty"`
	OwnerStartTime uint64 `json:"owner_start_time,omitempty"`
}

func init() {
	raw, ok := os.LookupEnv(superviseEnv)
	if !ok {
		return
	}
	os.Exit(runSupervisor(raw))
}

func runSupervisor(raw string) int {
	var a superviseArgs
	if err := json.Unmarshal([]byte(raw), &a); err != nil {
		fmt.Fprintf(os.Stderr, "supervisor: bad %s: %v\n", superviseEnv, err)
		return 2
	}
	listening := supervisor.ListeningNotifier()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("supervisor", a.Namespace)
	slog.SetDefault(log)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var sup *supervisor.Supervisor
	drv := qemu.New(qemu.Options{Logger: log, BeforeBoot: func(ctx context.Context, cfg *hypervisor.Config) error {
		return sup.BeforeBoot(ctx, cfg)
	}})
	sup = supervisor.New(supervisor.Options{
		Namespace: a.Namespace, StateRoot: a.StateRoot, RuntimeRoot: a.RuntimeRoot,
		Driver: drv, Gateway: newGateway(), Logger: log,
		OwnerPID: a.OwnerPID, OwnerStartTime: a.OwnerStartTime,
		Listening: listening,
	})
	if err := sup.Serve(ctx); err != nil {
		log.Error("supervisor stopped", "err", err)
		return 1
	}
	return 0
}

// ensureSupervisor starts the namespace's supervisor unless one runs.
// owner, when non-zero, is a process whose death brings the namespace down.
func ensureSupervisor(ctx context.Context, namespace, stateRoot string, owner int) (*supervisor.Client, error) {
	runRoot := filenames.RuntimeRoot()
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("start supervisor: %w", err)
	}
	a := superviseArgs{Namespace: namespace, StateRoot: stateRoot, RuntimeRoot: runRoot}
	if owner != 0 {
		a.OwnerPID = owner
		a.OwnerStartTime, _ = proc.StartTime(owner)
	}
	raw, err := json.Marshal(a)
	if err != nil {
		return nil, err
	}
	return supervisor.Ensure(ctx, supervisor.SpawnOptions{
		Namespace: namespace, StateRoot: stateRoot, RuntimeRoot: runRoot,
		Executable: exe, Env: append(os.Environ(), superviseEnv+"="+string(raw)),
		Dir: filepath.Dir(exe),
	})
}
