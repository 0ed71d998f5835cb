package engine

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	"github.com/stackvm/stack/state"
	"github.com/stackvm/stack/supervisor/api"
)

// waiters routes supervisor events to the VMs waiting for readiness and
// forwards every event to the progress sink.
type waiters struct {
	mu      sync.Mutex
	waiting map[string]chan api.Event
	done    chan struct{} // closed when the subscription ends
}

func newWaiters(events <-chan api.Event, forward func(api.Event)) *waiters {
	w := &waiters{waiting: map[string]chan api.Event{}, done: make(chan struct{})}
	go func() {
		for ev := range events {
			forward(ev)
			w.mu.Lock()
			ch := w.waiting[ev.Address]
			w.mu.Unlock()
			if ch != nil {
				select {
				case ch <- ev:
				default:
				}
			}
		}
		close(w.done)
	}()
	return w
}

// expect registers interest in address's events before the VM is started,
// so that a fast ready event is not missed.
func (w *waiters) expect(address string) <-chan api.Event {
	ch := make(chan api.Event, 64)
	w.mu.Lock()
	w.waiting[address] = ch
	w.mu.Unlock()
	return ch
}

func (w *waiters) forget(address string) {
	w.mu.Lock()
	delete(w.waiting, address)
	w.mu.Unlock()
}

// newInstance is a token for one incarnation of a VM: the supervisor tags
// the incarnation's events with it, so that the events of the VM it
// replaces, still on their way, do not count.
func newInstance() string {
	var tok [8]byte
	rand.Read(tok[:])
	return hex.EncodeToString(tok[:])
}

// launch is how every VMM of an apply starts: start asks the supervisor
// for it (start-vm or boot-vm) as the incarnation it is given; its process
// is recorded (or the failure), the caller's slot released, then (when
// set) held is run with the VMM up and its workload held, and the VM's
// readiness awaited, for at most timeout.
func (a *applier) launch(ctx context.Context, address, name string, timeout time.Duration, s *Slot,
	start func(instance string) (api.Started, error), held func() error) error {
	instance := newInstance()
	events := a.w.expect(address)
	defer a.w.forget(address)
	started, err := start(instance)
	if err != nil {
		a.recordVM(address, func(v *state.VM) { v.Status, v.Reason = state.StatusFailed, err.Error() })
		return a.e.vmFailure(address, name, err.Error())
	}
	a.noteAccel(started)
	if started.BootNote != "" {
		a.emit(address, PhaseWarning, started.BootNote)
	}
	p := started.Process
	if err := a.recordVM(address, func(v *state.VM) {
		v.Status, v.StartedAt, v.ExitCode, v.Reason = state.StatusBooting, time.Now().UTC(), nil, ""
		v.Process = &state.Process{Driver: p.Driver, PID: p.PID, StartTime: p.StartTime, RunDir: p.RunDir}
	}); err != nil {
		return err
	}
	// Waiting holds no slot: other VMs start meanwhile.
	s.Release()
	if held != nil {
		if err := held(); err != nil {
			return err
		}
	}
	if a.noWait {
		return nil
	}
	return a.awaitReady(ctx, events, address, name, instance, timeout)
}

// awaitReady waits for the ready event of one VM incarnation (instance),
// records the outcome in state, and turns a failure into a VMError with
// the console's tail.
func (a *applier) awaitReady(ctx context.Context, events <-chan api.Event, address, name, instance string, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", address, ctx.Err())
		case <-a.w.done:
			return a.e.vmFailure(address, name, "lost the connection to the supervisor")
		case <-deadline.C:
			return a.e.vmFailure(address, name, fmt.Sprintf("no readiness report after %s", timeout))
		case ev := <-events:
			if ev.Instance != instance {
				continue
			}
			switch ev.Phase {
			case api.PhaseReady:
				return a.recordVM(address, func(v *state.VM) { v.Status = state.StatusReady })
			case api.PhaseFailed, api.PhaseExited, api.PhaseStopped:
				reason := ev.Message
				a.recordVM(address, func(v *state.VM) { v.Status, v.Reason = state.StatusFailed, reason })
				return a.e.vmFailure(address, name, reason)
			}
		}
	}
}
