//go:build linux

package guestinit

import (
	"os"
	"os/exec"
	"os/signal"
	"sync"

	"golang.org/x/sys/unix"
)

// Reaper is PID 1's child handling: it reaps every child, including
// orphans reparented to the init, and hands the wait status of the children
// it started to whoever started them. Children must be started through
// Start, never waited on with exec.Cmd.Wait (the reaper takes their status).
type Reaper struct {
	mu      sync.Mutex
	waiters map[int]chan unix.WaitStatus
	sig     chan os.Signal
}

// StartReaper installs the SIGCHLD handler and starts reaping.
func StartReaper() *Reaper {
	ch := make(chan os.Signal, 16)
	r := &Reaper{waiters: map[int]chan unix.WaitStatus{}, sig: ch}
	signal.Notify(ch, unix.SIGCHLD)
	go func() {
		for range ch {
			r.reap()
		}
	}()
	return r
}

// Start starts cmd (whose stdio must be *os.File or nil, so that no copying
// goroutines wait on it) and returns its pid and a channel that receives its
// wait status once.
func (r *Reaper) Start(cmd *exec.Cmd) (int, <-chan unix.WaitStatus, error) {
	// Holding mu across Start keeps the reaper from reaping the child
	// before it is registered.
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return 0, nil, err
	}
	pid := cmd.Process.Pid
	ch := make(chan unix.WaitStatus, 1)
	r.waiters[pid] = ch
	_ = cmd.Process.Release()
	// A child that exited before the SIGCHLD handler saw it is picked up
	// by the next signal; reap once now as well.
	go r.reap()
	return pid, ch, nil
}

func (r *Reaper) reap() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		if ch, ok := r.waiters[pid]; ok {
			delete(r.waiters, pid)
			ch <- ws
		}
	}
}

// Stop ends the reaping (tests; PID 1 reaps for its whole life).
func (r *Reaper) Stop() {
	signal.Stop(r.sig)
	close(r.sig)
}
