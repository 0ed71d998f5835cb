package supervisor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/hypervisor/qemu"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/supervisor/api"
)

// Main runs a namespace's supervisor in this process when the process was
// started as one (api.SuperviseEnv is set: the engine re-executes its own
// binary that way), and returns its exit code; started is false, and
// nothing is done, otherwise. A program that can be re-executed as a
// supervisor calls it first thing (the stack command's main, and
// stacktest for test binaries).
func Main() (code int, started bool) {
	raw, ok := os.LookupEnv(api.SuperviseEnv)
	if !ok {
		return 0, false
	}
	os.Unsetenv(api.SuperviseEnv) // not for the VMMs and helpers it starts
	var a api.SuperviseArgs
	if err := json.Unmarshal([]byte(raw), &a); err != nil {
		fmt.Fprintf(os.Stderr, "supervisor: bad %s: %v\n", api.SuperviseEnv, err)
		return 2, true
	}
	if err := filenames.CheckNamespace(a.Namespace); err != nil {
		fmt.Fprintf(os.Stderr, "supervisor: %v\n", err)
		return 2, true
	}
	listening := ListeningNotifier()
	var logw io.Writer = os.Stderr
	if w, err := openLog(supervisorLogPath(a.StateRoot, a.Namespace), supervisorLogMax); err == nil {
		logw = w
	} else {
		fmt.Fprintf(os.Stderr, "supervisor: %v; logging to stderr uncapped\n", err)
	}
	log := slog.New(slog.NewTextHandler(logw, nil)).With("supervisor", a.Namespace)
	slog.SetDefault(log)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var sup *Supervisor
	drv := qemu.New(qemu.Options{Logger: log, BeforeBoot: func(ctx context.Context, cfg *hypervisor.Config) error {
		return sup.BeforeBoot(ctx, cfg)
	}})
	sup = New(Options{
		Namespace: a.Namespace, StateRoot: a.StateRoot, RuntimeRoot: a.RuntimeRoot,
		Driver: drv, Gateway: Gateways(), Logger: log,
		OwnerPID: a.OwnerPID, OwnerStartTime: a.OwnerStartTime,
		Listening: listening,
	})
	if err := sup.Serve(ctx); err != nil {
		log.Error("supervisor stopped", "err", err)
		return 1, true
	}
	return 0, true
}

// ListeningNotifier returns what a process spawned by client.Ensure sets as
// its Options.Listening: it writes to the readiness pipe and closes it. In
// a process not spawned that way it returns nil. Call it early: it also
// keeps the pipe from leaking into the VMMs the process starts.
func ListeningNotifier() func() {
	if os.Getenv(api.ReadyFDEnv) != strconv.Itoa(api.ReadyFD) {
		return nil
	}
	os.Unsetenv(api.ReadyFDEnv)
	syscall.CloseOnExec(api.ReadyFD)
	f := os.NewFile(api.ReadyFD, "supervisor-ready")
	return func() {
		f.Write([]byte{1})
		f.Close()
	}
}
