package qemu

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/hypervisor/proc"
)

// Attach implements hypervisor.Driver. QEMU serves one QMP client at a time:
// a handle still open elsewhere must be closed first, or Attach waits for it
// until ctx ends.
func (d *Driver) Attach(ctx context.Context, id hypervisor.Identity) (hypervisor.Instance, error) {
	if id.Driver != "" && id.Driver != DriverName {
		return nil, fmt.Errorf("attach to pid %d: identity is for driver %q", id.PID, id.Driver)
	}
	if !proc.Alive(id.PID, id.StartTime) {
		return nil, fmt.Errorf("attach to pid %d: %w", id.PID, hypervisor.ErrGone)
	}
	pf, err := openPidfd(id)
	if err != nil {
		return nil, fmt.Errorf("attach to pid %d: %w", id.PID, err)
	}
	inst := &instance{
		d:         d,
		log:       d.log.With("pid", id.PID, "run_dir", id.RunDir),
		id:        id,
		runDir:    id.RunDir,
		pidfd:     pf,
		exited:    make(chan struct{}),
		watchDone: make(chan struct{}),
		drained:   make(chan struct{}),
		closed:    make(chan struct{}),
	}
	inst.accel.Name = recordedAccel(id.RunDir)
	// The agent socket exists only for VMs started with the agent channel.
	if fi, err := os.Stat(agentPath(id.RunDir)); err == nil && fi.Mode()&fs.ModeSocket != 0 {
		inst.hasAgent = true
	}
	go inst.watchPidfd()
	c, err := dialQMP(ctx, qmpPath(id.RunDir), inst.exited)
	if err != nil {
		close(inst.closed)
		pf.Close()
		<-inst.watchDone
		if errors.Is(err, context.DeadlineExceeded) {
			// QEMU greets one QMP client at a time.
			err = fmt.Errorf("%w (is another handle on this VM still open?)", err)
		}
		return nil, fmt.Errorf("attach to pid %d: %w", id.PID, err)
	}
	inst.qmp = c
	go inst.watchEvents()
	if err := inst.resumeLeftPaused(ctx); err != nil {
		inst.log.Warn("resume a VM left paused", "err", err)
	}
	return inst, nil
}
