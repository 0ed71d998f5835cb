package client

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/internal/fsutil"
	"github.com/stackvm/stack/supervisor/api"
)

// SpawnOptions say how to start a supervisor process.
type SpawnOptions struct {
	Namespace   string
	StateRoot   string
	RuntimeRoot string
	// Executable, Args and Env start the supervisor process.
	Executable string
	Args       []string
	Env        []string
	Dir        string
}

// spawnTimeout bounds the wait for a new supervisor's first answer.
const spawnTimeout = 10 * time.Second

// Ensure returns a client for the namespace's supervisor, starting one when
// none answers. The supervisor is detached (its own session, stdio to its
// log file) so that it outlives the command that started it.
func Ensure(ctx context.Context, o SpawnOptions) (*Client, error) {
	c, err := Dial(ctx, o.RuntimeRoot, o.StateRoot, o.Namespace)
	if !errors.Is(err, ErrNotRunning) {
		return c, err // running, or running but not for this command
	}
	nsDir := filenames.NamespaceState(o.StateRoot, o.Namespace)
	if err := fsutil.MkdirPrivate(nsDir); err != nil {
		return nil, fmt.Errorf("start supervisor: %w", err)
	}
	logf, err := os.OpenFile(filepath.Join(nsDir, filenames.SupervisorLog), os.O_CREATE|os.O_WRONLY|os.O_APPEND, filenames.FileMode)
	if err != nil {
		return nil, fmt.Errorf("start supervisor: %w", err)
	}
	defer logf.Close()
	// The child gets the write end of a pipe and writes to it once its
	// socket listens (supervisor.ListeningNotifier): the first dial then
	// succeeds without a polling delay. Polling stays as the fallback.
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start supervisor: %w", err)
	}
	defer readyR.Close()
	cmd := exec.Command(o.Executable, o.Args...)
	cmd.Env = append(append([]string(nil), o.Env...), api.ReadyFDEnv+"="+strconv.Itoa(api.ReadyFD))
	cmd.Dir = o.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{readyW} // fd 3 == api.ReadyFD
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	readyW.Close()
	if err != nil {
		return nil, fmt.Errorf("start supervisor: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	ready := make(chan struct{})
	go func() {
		var b [1]byte
		readyR.Read(b[:]) // a byte, or EOF when the child closes or dies
		close(ready)
	}()
	deadline := time.Now().Add(spawnTimeout)
	for time.Now().Before(deadline) {
		c, err := Dial(ctx, o.RuntimeRoot, o.StateRoot, o.Namespace)
		if !errors.Is(err, ErrNotRunning) {
			// Up, or a race lost to a command for another state directory.
			return c, err
		}
		select {
		case err := <-exited:
			return nil, fmt.Errorf("start supervisor: it exited at once (%v); see %s", err, logf.Name())
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-ready:
			ready = nil
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil, fmt.Errorf("start supervisor: no answer on its socket after %s; see %s", spawnTimeout, logf.Name())
}
