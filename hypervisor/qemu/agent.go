package qemu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// agentChannel is the host end of the virtio-serial agent port. It connects
// in the background (QEMU serves the socket from startup; the guest speaks
// once its init runs) and delivers each line the guest sends.
type agentChannel struct {
	path   string
	log    *slog.Logger
	events chan []byte
	ready  chan struct{} // closed once connected
	stop   chan struct{}
	once   sync.Once
	// wsem admits one writer at a time. A channel rather than a mutex:
	// a guest that stops reading blocks the writer, and whoever waits
	// behind it (the stop path's poweroff) must give up with its context.
	wsem chan struct{}
	// cut is the unwritten end of a line whose write ended early (its
	// deadline): the next writer sends it first, so that the guest, which
	// reads lines, never reads two messages as one. The holder of wsem
	// owns it.
	cut  []byte
	conn net.Conn // set before ready closes
	done chan struct{}
}

func newAgentChannel(path string, exited, closed <-chan struct{}, lg *slog.Logger) *agentChannel {
	a := &agentChannel{
		path:   path,
		log:    lg,
		events: make(chan []byte, 64),
		ready:  make(chan struct{}),
		stop:   make(chan struct{}),
		wsem:   make(chan struct{}, 1),
		done:   make(chan struct{}),
	}
	go func() {
		select {
		case <-exited:
		case <-closed:
		case <-a.done:
		}
		a.close()
	}()
	go a.run()
	return a
}

func (a *agentChannel) close() { a.once.Do(func() { close(a.stop) }) }

func (a *agentChannel) run() {
	defer close(a.done)
	defer close(a.events)
	var conn net.Conn
	for {
		c, err := net.Dial("unix", a.path)
		if err == nil {
			conn = c
			break
		}
		select {
		case <-a.stop:
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
	a.conn = conn
	// Ask for the guest's status. The guest also sends a hello by itself
	// when it sees the host connect, but a disconnect followed quickly by a
	// reconnect (a handle closed, another attached) can pass unseen by a
	// guest blocked in read(): the port is "connected" again before the
	// reader wakes. An explicit request is never missed. Guests answer any
	// host hello with their own.
	conn.SetWriteDeadline(time.Now().Add(agentWriteTimeout))
	if _, err := conn.Write([]byte(`{"type":"hello"}` + "\n")); err != nil {
		a.log.Debug("guest hello request failed", "err", err)
	}
	close(a.ready)
	go func() {
		<-a.stop
		conn.Close()
	}()
	// Lines are JSON messages, short except for future exec output; a
	// generous limit keeps one bad line from eating memory.
	r := newLineReader(conn, 1<<20)
	for {
		line, err := r.next()
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				a.log.Warn("guest agent channel read failed", "err", err)
			}
			return
		}
		if len(line) == 0 {
			continue
		}
		select {
		case a.events <- line:
		case <-a.stop:
			return
		}
	}
}

// Events implements hypervisor.GuestChannel.
func (a *agentChannel) Events() <-chan []byte { return a.events }

// agentWriteTimeout bounds every write to the guest, whatever the caller's
// context: the host end is a socket into QEMU, which passes bytes on only
// as fast as the guest reads its port, so a guest that stops reading would
// otherwise hold a writer forever. A guest init reads its port at once;
// ten seconds is far beyond any honest stall (a TCG guest on a loaded host
// included).
const agentWriteTimeout = 10 * time.Second

// Send implements hypervisor.GuestChannel: msg must be one JSON value; it is
// compacted onto one line. Waiting for the channel and writing both end
// with ctx, and the write within agentWriteTimeout. A message cut short
// after part of it went out is finished by the next Send before its own
// (so it may reach the guest after its sender was told it failed): a
// guest that was only slow, or paused, gets whole lines.
func (a *agentChannel) Send(ctx context.Context, msg []byte) error {
	var buf bytes.Buffer
	if err := json.Compact(&buf, msg); err != nil {
		return fmt.Errorf("send to guest: message is not JSON: %w", err)
	}
	buf.WriteByte('\n')
	select {
	case <-a.ready:
	case <-a.stop:
		return errChannelClosed
	case <-ctx.Done():
		return fmt.Errorf("send to guest: connect: %w", ctx.Err())
	}
	select {
	case a.wsem <- struct{}{}:
	case <-a.stop:
		return errChannelClosed
	case <-ctx.Done():
		return fmt.Errorf("send to guest: wait for the channel: %w", ctx.Err())
	}
	defer func() { <-a.wsem }()
	select {
	case <-a.stop:
		return errChannelClosed
	default:
	}
	dl := time.Now().Add(agentWriteTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	a.conn.SetWriteDeadline(dl)
	// A cancelled context ends the write too. The next writer sets its
	// own deadline, so this one's cancellation must be over before the
	// channel is handed on.
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		a.conn.SetWriteDeadline(time.Now())
		close(fired)
	})
	data := buf.Bytes()
	pending := len(a.cut)
	if pending > 0 {
		data = append(a.cut, data...)
	}
	n, err := a.conn.Write(data)
	if !stop() {
		<-fired
	}
	switch {
	case n < pending: // not even the cut line is done; msg is not sent
		a.cut = append([]byte(nil), data[n:pending]...)
	case n < len(data):
		a.cut = append([]byte(nil), data[n:]...)
	default:
		a.cut = nil
	}
	if err != nil {
		if n > pending {
			a.log.Warn("guest stopped reading its agent port in the middle of a message; the next message finishes it", "written", n-pending, "of", buf.Len(), "err", err)
		}
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return fmt.Errorf("send to guest: %w", err)
	}
	return nil
}

var errChannelClosed = errors.New("send to guest: channel closed")

// lineReader reads newline-terminated lines of bounded length.
type lineReader struct {
	r   *bufio.Reader
	max int
}

func newLineReader(r io.Reader, max int) *lineReader {
	return &lineReader{r: bufio.NewReaderSize(r, 64<<10), max: max}
}

var errLineTooLong = errors.New("line too long")

// next returns the next line without its newline. A final line without a
// newline is returned before io.EOF.
func (l *lineReader) next() ([]byte, error) {
	var line []byte
	for {
		frag, err := l.r.ReadSlice('\n')
		line = append(line, frag...)
		if len(line) > l.max {
			return nil, fmt.Errorf("read guest line: %w", errLineTooLong)
		}
		switch {
		case err == nil:
			return line[:len(line)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) && len(line) > 0:
			return line, nil
		default:
			return nil, err
		}
	}
}
