package supervisor

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/supervisor/api"
)

// running returns v's VMM when one runs (not halted, not ended), for the
// operations that act on a running VM; verb names it in errors.
func (s *Supervisor) running(verb, address string) (*vmRun, hypervisor.Instance, error) {
	v := s.vm(address)
	if v == nil {
		return nil, nil, fmt.Errorf("%s %s: no such VM", verb, address)
	}
	v.mu.Lock()
	inst, st := v.inst, v.st
	v.mu.Unlock()
	if inst == nil || st.Halted || st.State.Ended() {
		return nil, nil, fmt.Errorf("%s %s: it does not run (%s)", verb, st.Name, st.State)
	}
	return v, inst, nil
}

// pauseVM stops v's CPUs (QMP stop): `stack pause`. A paused VM shows as
// paused; its readiness timeout does not run meanwhile (runningTimeout).
// Pausing a paused VM does nothing.
func (s *Supervisor) pauseVM(ctx context.Context, address string) error {
	v, inst, err := s.running("pause", address)
	if err != nil {
		return err
	}
	if err := inst.Pause(ctx); err != nil {
		return fmt.Errorf("pause %s: %w", v.spec.Name, err)
	}
	v.setPaused(true)
	s.emitVM(v, api.PhasePaused, "paused")
	return nil
}

// resumeVM lets a paused VM's CPUs run again (QMP cont): `stack unpause`.
// Resuming a VM that runs does nothing.
func (s *Supervisor) resumeVM(ctx context.Context, address string) error {
	v, inst, err := s.running("unpause", address)
	if err != nil {
		return err
	}
	if err := inst.Resume(ctx); err != nil {
		return fmt.Errorf("unpause %s: %w", v.spec.Name, err)
	}
	v.setPaused(false)
	s.emitVM(v, api.PhaseUnpaused, "running again")
	return nil
}

// signalVM sends sig to v's VMM process: `stack kill`. What follows is what
// follows any end of a VMM (its restart policy decides).
func (s *Supervisor) signalVM(address string, sig syscall.Signal) error {
	if sig <= 0 {
		return errors.New("signal-vm without a signal")
	}
	v, inst, err := s.running("kill", address)
	if err != nil {
		return err
	}
	if err := inst.Signal(sig); err != nil {
		return fmt.Errorf("kill %s: %w", v.spec.Name, err)
	}
	return nil
}

// setPaused records whether v's CPUs are stopped and wakes what waits on
// it (runningTimeout).
func (v *vmRun) setPaused(paused bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.st.Paused == paused {
		return
	}
	v.st.Paused = paused
	if v.pauseNews != nil {
		close(v.pauseNews)
		v.pauseNews = nil
	}
}

// pausedNow is whether v is paused, and a channel closed when that changes.
func (v *vmRun) pausedNow() (bool, <-chan struct{}) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.pauseNews == nil {
		v.pauseNews = make(chan struct{})
	}
	return v.st.Paused, v.pauseNews
}

// runningTimeout is ctx, cancelled with the cause
// context.DeadlineExceeded once v has run for d: time spent paused does not
// count, so that a paused VM's readiness waits for it (as docker's health
// checks wait for a paused container).
func (v *vmRun) runningTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	go func() {
		left := d
		for {
			paused, news := v.pausedNow()
			if paused {
				select {
				case <-news:
					continue
				case <-ctx.Done():
					return
				}
			}
			t0 := time.Now()
			timer := time.NewTimer(left)
			select {
			case <-timer.C:
				cancel(context.DeadlineExceeded)
				return
			case <-news:
				timer.Stop()
				left -= time.Since(t0)
			case <-ctx.Done():
				timer.Stop()
				return
			}
		}
	}()
	return ctx, func() { cancel(context.Canceled) }
}
