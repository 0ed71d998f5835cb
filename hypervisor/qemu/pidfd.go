package qemu

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"

	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/hypervisor/proc"
	"golang.org/x/sys/unix"
)

func pidfdOpen(pid int) (int, error) {
	// PIDFD_NONBLOCK makes os.NewFile register the fd with the runtime
	// poller, so waiting for the exit parks a goroutine, not a thread.
	return unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
}

// pidfdExited reports whether the pidfd's process has exited (the fd polls
// readable then).
func pidfdExited(fd int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n > 0 && fds[0].Revents&(unix.POLLIN|unix.POLLHUP) != 0
}

func pidfdSendSignal(f *os.File, sig unix.Signal) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.PidfdSendSignal(int(fd), sig, nil, 0)
	}); err != nil {
		return err
	}
	return serr
}

// openPidfd opens a pidfd for id and checks, after opening, that the pid
// still has the recorded start time: from then on the pidfd refers to that
// process whatever happens to the pid.
func openPidfd(id hypervisor.Identity) (*os.File, error) {
	fd, err := pidfdOpen(id.PID)
	if err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return nil, hypervisor.ErrGone
		}
		return nil, fmt.Errorf("open pidfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "pidfd:"+strconv.Itoa(id.PID))
	if !proc.Alive(id.PID, id.StartTime) {
		f.Close()
		return nil, hypervisor.ErrGone
	}
	return f, nil
}
