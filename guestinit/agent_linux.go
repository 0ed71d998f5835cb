//go:build linux

package guestinit

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stackvm/stack/guestproto"
)

// FindPort returns the /dev node of the virtio-serial port named name. Without
// udev there is no /dev/virtio-ports/<name> link, so the name is looked up in
// /sys/class/virtio-ports/*/name and the node (vportNpM) comes from devtmpfs.
func FindPort(sysClass, name string) (string, error) {
	ents, err := os.ReadDir(sysClass)
	if err != nil {
		return "", fmt.Errorf("find agent port: %w", err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(sysClass, e.Name(), "name"))
		if err == nil && strings.TrimSpace(string(b)) == name {
			return "/dev/" + e.Name(), nil
		}
	}
	return "", fmt.Errorf("find agent port: no virtio-serial port named %s", name)
}

// Agent speaks guestproto on the virtio-serial port.
//
// Host connection tracking, as the Linux virtio_console driver and QEMU 7.2
// behave (checked by this package's boot tests): QEMU tells the guest when
// the chardev behind the port (a unix socket) gains or loses its peer;
// while no host is connected poll() on the port reports POLLHUP at once and
// read() returns 0, and a blocking write() would wait for a host. So the
// agent keeps the port non-blocking, and while disconnected it re-polls
// every hupPoll to notice the host arriving (POLLHUP clears); on each
// arrival it sends a hello with the current Status first. Messages queued
// while no host is connected are dropped: the next hello carries the state
// they described. A host that disconnects and reconnects quickly can do so
// unseen (QEMU queues both control events and the guest may process them in
// one go, never observing POLLHUP), so a host hello is answered with a
// guest hello too; hosts must accept a hello at any time.
type Agent struct {
	path   string
	status func() guestproto.Status
	onMsg  func(guestproto.Message)
	logf   func(format string, args ...any)
	wakeR  int
	wakeW  int
	mu     sync.Mutex
	queue  [][]byte
	conn   bool
	stop   bool // Close was called
	closed bool // serve has returned and closed the wake pipe
}

const hupPoll = 25 * time.Millisecond

// NewAgent opens the port. status is called for every hello; onMsg gets the
// host's messages (from the agent's goroutine).
func NewAgent(path string, status func() guestproto.Status, onMsg func(guestproto.Message), logf func(string, ...any)) (*Agent, error) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return nil, fmt.Errorf("create agent wake pipe: %w", err)
	}
	a := &Agent{path: path, status: status, onMsg: onMsg, logf: logf, wakeR: p[0], wakeW: p[1]}
	return a, nil
}

// Send queues m for the host; it is dropped if no host is connected.
func (a *Agent) Send(m guestproto.Message) {
	a.mu.Lock()
	if a.conn {
		a.queue = append(a.queue, encodeMessage(m))
	}
	a.mu.Unlock()
	a.wake()
}

// Close makes Run return (tests; the init's agent lives as long as the VM).
func (a *Agent) Close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.closed {
		a.stop = true
		_, _ = unix.Write(a.wakeW, []byte{1})
	}
}

func (a *Agent) wake() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.closed {
		_, _ = unix.Write(a.wakeW, []byte{1})
	}
}

// Flush waits until the queue is written, no host is connected, or timeout.
func (a *Agent) Flush(timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	a.mu.Lock()
	defer a.mu.Unlock()
	for a.conn && len(a.queue) > 0 && time.Now().Before(deadline) {
		a.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
		a.mu.Lock()
	}
}

// Run opens the port and serves it until it fails.
func (a *Agent) Run() error {
	fd, err := unix.Open(a.path, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		return fmt.Errorf("open agent port %s: %w", a.path, err)
	}
	defer unix.Close(fd)
	return a.serve(fd)
}

// serve runs the agent on an open non-blocking fd (a virtio-serial port, or
// a socket in tests: both report POLLHUP and read 0 without a peer).
func (a *Agent) serve(fd int) error {
	defer func() {
		// Under mu, so that no wake() writes to a closed (and possibly
		// reused) descriptor number.
		a.mu.Lock()
		a.closed, a.conn, a.queue = true, false, nil
		unix.Close(a.wakeR)
		unix.Close(a.wakeW)
		a.mu.Unlock()
	}()
	var lr lineReader
	buf := make([]byte, 64*1024)
	var partial []byte // rest of a partly written message
	for {
		a.mu.Lock()
		connected, stop := a.conn, a.stop
		a.mu.Unlock()
		if stop {
			return nil
		}
		if !connected {
			// POLLHUP is reported whatever the requested events, so a
			// disconnected port cannot be waited on: sleep on the wake
			// pipe, then look again.
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLOUT}}
			if _, err := unix.Poll(pfd, 0); err != nil && !errors.Is(err, unix.EINTR) {
				return fmt.Errorf("poll agent port: %w", err)
			}
			if pfd[0].Revents&unix.POLLHUP != 0 {
				w := []unix.PollFd{{Fd: int32(a.wakeR), Events: unix.POLLIN}}
				_, _ = unix.Poll(w, int(hupPoll/time.Millisecond))
				a.drainWake()
				continue
			}
			st := a.status()
			a.mu.Lock()
			a.conn = true
			a.queue = append([][]byte{encodeMessage(guestproto.Message{Type: guestproto.TypeHello, Status: &st})}, a.queue...)
			a.mu.Unlock()
			lr = lineReader{}
			partial = nil
			continue
		}
		a.mu.Lock()
		pending := len(partial) > 0 || len(a.queue) > 0
		a.mu.Unlock()
		events := int16(unix.POLLIN)
		if pending {
			events |= unix.POLLOUT
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: events}, {Fd: int32(a.wakeR), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, -1); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("poll agent port: %w", err)
		}
		if pfd[1].Revents != 0 {
			a.drainWake()
		}
		re := pfd[0].Revents
		if re&unix.POLLIN != 0 {
			for {
				n, err := unix.Read(fd, buf)
				if n > 0 {
					msgs, errs := lr.feed(buf[:n])
					for _, e := range errs {
						a.logf("%v", e)
					}
					for _, m := range msgs {
						if m.Type == guestproto.TypeHello {
							// The host asks for the state (it cannot rely
							// on the guest noticing a quick reconnect).
							st := a.status()
							a.mu.Lock()
							a.queue = append(a.queue, encodeMessage(guestproto.Message{Type: guestproto.TypeHello, Status: &st}))
							a.mu.Unlock()
							continue
						}
						a.onMsg(m)
					}
					continue
				}
				if n == 0 && err == nil {
					re |= unix.POLLHUP // EOF: the host went away
				} else if err != nil && !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
					return fmt.Errorf("read agent port: %w", err)
				}
				break
			}
		}
		if re&unix.POLLHUP != 0 {
			a.mu.Lock()
			a.conn = false
			a.queue = nil
			a.mu.Unlock()
			partial = nil
			continue
		}
		if re&unix.POLLOUT != 0 {
			for {
				if len(partial) == 0 {
					a.mu.Lock()
					if len(a.queue) == 0 {
						a.mu.Unlock()
						break
					}
					partial = a.queue[0]
					a.mu.Unlock()
				}
				n, err := unix.Write(fd, partial)
				if err != nil {
					if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
						break
					}
					return fmt.Errorf("write agent port: %w", err)
				}
				partial = partial[n:]
				if len(partial) == 0 {
					a.mu.Lock()
					if len(a.queue) > 0 {
						a.queue = a.queue[1:]
					}
					a.mu.Unlock()
				}
			}
		}
	}
}

func (a *Agent) drainWake() {
	var b [64]byte
	for {
		if n, err := unix.Read(a.wakeR, b[:]); n <= 0 || err != nil {
			return
		}
	}
}
