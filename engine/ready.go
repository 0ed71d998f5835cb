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

// readyPoll is how often a readiness wait also asks the supervisor for
// the VM's status: the supervisor drops events for a watcher that does not
// keep up rather than stall (a progress display at terminal speed, while
// a guest elsewhere floods its reports), and a VM whose ready event was
// missed is ready all the same.
const readyPoll = time.Second

// awaitReady waits for one VM incarnation (instance) to be ready, by its
// events or its status, records the outcome in state, and turns a failure
// into a VMError with the console's tail.
func (a *applier) awaitReady(ctx context.Context, events <-chan api.Event, address, name, instance string, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	poll := time.NewTicker(readyPoll)
	defer poll.Stop()
	// A VM can be ready with warnings (cloud-init modules that failed),
	// which its ready event and its status carry.
	ready := func(warnings []string) error {
		for _, w := range warnings {
			a.emit(address, PhaseWarning, w)
		}
		return a.recordVM(address, func(v *state.VM) { v.Status = state.StatusReady })
	}
	failed := func(reason string) error {
		a.recordVM(address, func(v *state.VM) { v.Status, v.Reason = state.StatusFailed, reason })
		return a.e.vmFailure(address, name, reason)
	}
	// onEvent says whether ev ends the wait, and how.
	onEvent := func(ev api.Event) (bool, error) {
		if ev.Instance != instance {
			return false, nil
		}
		switch ev.Phase {
		case api.PhaseReady:
			return true, ready(ev.Warnings)
		case api.PhaseFailed, api.PhaseExited, api.PhaseStopped:
			return true, failed(ev.Message)
		}
		return false, nil
	}
	// byStatus ends the wait on a final status whose event was missed,
	// and says so to progress. The supervisor sets the state before it
	// sends the event, so a late event gets a moment first, lest progress
	// hear of it twice.
	byStatus := func(st api.VMStatus) error {
		grace := time.NewTimer(statusGrace)
		defer grace.Stop()
		for waiting := true; waiting; {
			select {
			case ev := <-events:
				if done, err := onEvent(ev); done {
					return err
				}
			case <-grace.C:
				waiting = false
			}
		}
		if st.State == api.StateReady {
			a.emit(address, PhaseReady, "ready (seen in its status)")
			return ready(st.Warnings)
		}
		a.emit(address, PhaseFailed, st.Reason)
		return failed(st.Reason)
	}
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", address, ctx.Err())
		case <-a.w.done:
			return a.e.vmFailure(address, name, "lost the connection to the supervisor")
		case <-deadline.C:
			if st, ok := a.statusOf(ctx, address, instance); ok && st.State == api.StateReady {
				return byStatus(st)
			}
			return a.e.vmFailure(address, name, fmt.Sprintf("no readiness report after %s", timeout))
		case <-poll.C:
			st, ok := a.statusOf(ctx, address, instance)
			if ok && (st.State == api.StateReady || st.State == api.StateFailed || st.State == api.StateStopped) {
				return byStatus(st)
			}
		case ev := <-events:
			if done, err := onEvent(ev); done {
				return err
			}
		}
	}
}

// statusGrace is how long a final status waits for its event.
const statusGrace = 250 * time.Millisecond

// statusOf is the supervisor's status of the VM at address when it is of
// incarnation instance.
func (a *applier) statusOf(ctx context.Context, address, instance string) (api.VMStatus, bool) {
	list, err := a.sup.Status(ctx)
	if err != nil {
		return api.VMStatus{}, false
	}
	for _, st := range list {
		if st.Address == address && st.Instance == instance {
			return st, true
		}
	}
	return api.VMStatus{}, false
}
