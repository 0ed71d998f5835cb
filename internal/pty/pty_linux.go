//go:build linux

// Package pty opens Linux pseudo-terminals with plain ioctls (no cgo): the
// guest init runs `exec -t` commands on one, and tests drive `stack exec
// -it` from one.
package pty

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Open returns a new pseudo-terminal's master and slave ends. Neither
// becomes the caller's controlling terminal (O_NOCTTY); both are
// close-on-exec, as every file Go opens.
func Open() (master, slave *os.File, err error) {
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open pty: %w", err)
	}
	name, err := unlock(m)
	if err != nil {
		m.Close()
		return nil, nil, err
	}
	s, err := os.OpenFile(name, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		return nil, nil, fmt.Errorf("open pty slave: %w", err)
	}
	return m, s, nil
}

// unlock is unlockpt and ptsname: it returns the slave's path.
func unlock(m *os.File) (string, error) {
	rc, err := m.SyscallConn()
	if err != nil {
		return "", fmt.Errorf("unlock pty: %w", err)
	}
	var n uint32
	var ioErr error
	if err := rc.Control(func(fd uintptr) {
		if ioErr = unix.IoctlSetPointerInt(int(fd), unix.TIOCSPTLCK, 0); ioErr != nil {
			ioErr = fmt.Errorf("unlock pty: %w", ioErr)
			return
		}
		if n, ioErr = unix.IoctlGetUint32(int(fd), unix.TIOCGPTN); ioErr != nil {
			ioErr = fmt.Errorf("get pty number: %w", ioErr)
		}
	}); err != nil {
		return "", fmt.Errorf("unlock pty: %w", err)
	}
	if ioErr != nil {
		return "", ioErr
	}
	return "/dev/pts/" + strconv.FormatUint(uint64(n), 10), nil
}

// SetSize sets the window size of the terminal f (either end); the
// foreground process group of the terminal gets SIGWINCH.
func SetSize(f *os.File, rows, cols uint16) error {
	return control(f, "set window size", func(fd int) error {
		return unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
	})
}

// Size returns the window size of the terminal f.
func Size(f *os.File) (rows, cols uint16, err error) {
	err = control(f, "get window size", func(fd int) error {
		ws, err := unix.IoctlGetWinsize(fd, unix.TIOCGWINSZ)
		if err == nil {
			rows, cols = ws.Row, ws.Col
		}
		return err
	})
	return rows, cols, err
}

func control(f *os.File, what string, op func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	var opErr error
	if err := rc.Control(func(fd uintptr) { opErr = op(int(fd)) }); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if opErr != nil {
		return fmt.Errorf("%s: %w", what, opErr)
	}
	return nil
}
