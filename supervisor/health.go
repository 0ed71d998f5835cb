package supervisor

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/supervisor/api"
)

// watchHealth runs v's health check while inst is its VMM and ctx lasts
// (see api.Health): it sets v's health, emits the changes, and kills an
// unhealthy VMM whose restart policy is on-failure or always, for the
// supervising loop to restart it as any VMM that failed.
func (s *Supervisor) watchHealth(ctx context.Context, v *vmRun, inst hypervisor.Instance) {
	v.mu.Lock()
	h := *v.spec.Health
	restart := v.spec.Restart
	v.mu.Unlock()
	s.setHealth(v, api.HealthStarting, "")
	graceEnd := time.Now().Add(time.Duration(h.StartPeriod))
	interval := max(time.Duration(h.Interval), 100*time.Millisecond)
	fails := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
		if v.instance() != inst {
			return // a new VMM has its own check
		}
		if paused, _ := v.pausedNow(); paused {
			continue
		}
		err := s.checkHealth(ctx, v, inst, h.Probe)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			fails = 0
			s.setHealth(v, api.HealthHealthy, "healthy")
			continue
		}
		if time.Now().Before(graceEnd) {
			continue
		}
		if fails++; fails < h.Retries {
			continue
		}
		s.setHealth(v, api.HealthUnhealthy, fmt.Sprintf("unhealthy: %d checks in a row failed, the last: %v", fails, err))
		if restart == api.RestartOnFailure || restart == api.RestartAlways {
			v.mu.Lock()
			v.unhealthyKill = true
			v.mu.Unlock()
			inst.Kill()
			return
		}
	}
}

// checkHealth runs one health check: the probe must pass within its
// timeout.
func (s *Supervisor) checkHealth(ctx context.Context, v *vmRun, inst hypervisor.Instance, probe api.Ready) error {
	timeout := max(time.Duration(probe.Timeout), 100*time.Millisecond)
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var err error
	if len(probe.Exec) > 0 {
		_, err = s.probeExec(pctx, v, inst, probe.Exec)
	} else {
		_, err = s.probe(pctx, v, probe)
	}
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		return fmt.Errorf("no pass within %s (%s)", timeout, readyWhat(probe))
	}
	return err
}

// setHealth records v's health and emits a change (msg, when set).
func (s *Supervisor) setHealth(v *vmRun, health, msg string) {
	v.mu.Lock()
	changed := v.st.Health != health
	v.st.Health = health
	v.mu.Unlock()
	if !changed || msg == "" {
		return
	}
	phase := api.PhaseHealthy
	if health == api.HealthUnhealthy {
		phase = api.PhaseUnhealthy
	}
	s.emitVM(v, phase, msg)
}
