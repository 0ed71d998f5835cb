// Package qmp is a small client for the QEMU Machine Protocol over a unix
// socket: the greeting and capabilities handshake, commands matched to their
// replies by id (several may be in flight at once), asynchronous events on a
// channel, and QMP errors as typed Go errors.
//
// It is our own rather than a library because the part we need is small and
// the available libraries either hide events behind their own goroutines or
// pull in libvirt.
package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// ErrClosed is wrapped by every error caused by the connection going away:
// QEMU exited, or Close was called. Commands still waiting for a reply fail
// with it.
var ErrClosed = errors.New("qmp connection closed")

// Error is an error reply from QEMU ({"error": {"class": ..., "desc": ...}}).
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *Error) Error() string { return "qmp " + e.Class + ": " + e.Desc }

// Event is an asynchronous QMP event (SHUTDOWN, STOP, RESUME, RESET,
// POWERDOWN, ...).
type Event struct {
	Name string
	Data json.RawMessage
	Time time.Time
}

// Greeting is what QEMU says first.
type Greeting struct {
	Version struct {
		QEMU struct {
			Major int `json:"major"`
			Minor int `json:"minor"`
			Micro int `json:"micro"`
		} `json:"qemu"`
		Package string `json:"package"`
	} `json:"version"`
	Capabilities []string `json:"capabilities"`
}

// EventBuffer is how many events are held for a slow reader of Events; the
// reader never blocks on events, so beyond this they are dropped (and
// logged) rather than stalling command replies.
const EventBuffer = 128

// Client is one QMP connection. Its methods are safe for concurrent use.
type Client struct {
	conn     net.Conn
	greeting Greeting
	log      *slog.Logger

	wmu sync.Mutex // serialises writes

	mu      sync.Mutex
	pending map[string]chan reply
	nextID  uint64
	closed  bool
	err     error // why the connection ended, wraps ErrClosed

	events chan Event
	done   chan struct{}
}

type reply struct {
	ret json.RawMessage
	err error
}

// message is any line QEMU sends after the greeting.
type message struct {
	Return    json.RawMessage `json:"return"`
	Error     *Error          `json:"error"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	ID        json.RawMessage `json:"id"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

type command struct {
	Execute   string `json:"execute"`
	Arguments any    `json:"arguments,omitempty"`
	ID        string `json:"id"`
}

// Dial connects to the QMP socket at path and performs the handshake.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("dial qmp %s: %w", path, err)
	}
	c, err := New(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// New performs the handshake on conn (reads the greeting, negotiates
// capabilities) and starts reading replies and events. The Client owns conn
// from then on, also on error.
func New(ctx context.Context, conn net.Conn) (*Client, error) {
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	dec := json.NewDecoder(conn)
	var g struct {
		QMP *Greeting `json:"QMP"`
	}
	if err := dec.Decode(&g); err != nil {
		stop()
		conn.Close()
		return nil, fmt.Errorf("read qmp greeting: %w", ctxErr(ctx, err))
	}
	if g.QMP == nil {
		stop()
		conn.Close()
		return nil, errors.New("read qmp greeting: not a QMP greeting")
	}
	b, _ := json.Marshal(command{Execute: "qmp_capabilities", ID: "0"})
	if _, err := conn.Write(append(b, '\n')); err != nil {
		stop()
		conn.Close()
		return nil, fmt.Errorf("negotiate qmp capabilities: %w", ctxErr(ctx, err))
	}
	// No events are sent in capabilities negotiation mode, so the next
	// message is the reply.
	var m message
	if err := dec.Decode(&m); err != nil {
		stop()
		conn.Close()
		return nil, fmt.Errorf("negotiate qmp capabilities: %w", ctxErr(ctx, err))
	}
	if m.Error != nil {
		stop()
		conn.Close()
		return nil, fmt.Errorf("negotiate qmp capabilities: %w", m.Error)
	}
	if !stop() {
		conn.Close()
		return nil, fmt.Errorf("negotiate qmp capabilities: %w", ctx.Err())
	}
	conn.SetDeadline(time.Time{})
	c := &Client{
		conn:     conn,
		greeting: *g.QMP,
		log:      slog.Default().With("component", "qmp"),
		pending:  make(map[string]chan reply),
		nextID:   1,
		events:   make(chan Event, EventBuffer),
		done:     make(chan struct{}),
	}
	go c.read(dec)
	return c, nil
}

// ctxErr turns an I/O error caused by the context (its deadline, copied to
// the connection, or its cancellation) into the context's error.
func ctxErr(ctx context.Context, err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		if _, ok := ctx.Deadline(); ok {
			<-ctx.Done() // the deadline has passed: this is immediate
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// Greeting returns QEMU's greeting (its version).
func (c *Client) Greeting() Greeting { return c.greeting }

// Events delivers asynchronous events in the order QEMU sent them. It is
// closed when the connection ends. Events are dropped when more than
// EventBuffer are waiting.
func (c *Client) Events() <-chan Event { return c.events }

// Done is closed when the connection has ended; Err then says why.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err is why the connection ended (wrapping ErrClosed), or nil while open.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *Client) read(dec *json.Decoder) {
	var cause error
	for {
		var m message
		if err := dec.Decode(&m); err != nil {
			cause = err
			break
		}
		if m.Event != "" {
			ev := Event{Name: m.Event, Data: m.Data}
			if m.Timestamp != nil {
				ev.Time = time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000)
			}
			select {
			case c.events <- ev:
			default:
				c.log.Warn("qmp event dropped: reader too slow", "event", ev.Name)
			}
			continue
		}
		var id string
		if err := json.Unmarshal(m.ID, &id); err != nil {
			c.log.Warn("qmp reply without a usable id ignored", "id", string(m.ID))
			continue
		}
		c.mu.Lock()
		ch := c.pending[id]
		delete(c.pending, id)
		c.mu.Unlock()
		if ch == nil {
			continue // the caller gave up (context cancelled)
		}
		if m.Error != nil {
			ch <- reply{err: m.Error}
		} else {
			ch <- reply{ret: m.Return}
		}
	}
	c.mu.Lock()
	if c.err == nil {
		if errors.Is(cause, io.EOF) || errors.Is(cause, io.ErrUnexpectedEOF) {
			c.err = fmt.Errorf("%w: qemu closed the connection", ErrClosed)
		} else {
			c.err = fmt.Errorf("%w: %v", ErrClosed, cause)
		}
	}
	c.closed = true
	for id, ch := range c.pending {
		ch <- reply{err: c.err}
		delete(c.pending, id)
	}
	c.mu.Unlock()
	c.conn.Close()
	close(c.events)
	close(c.done)
}

// Execute runs one command and returns its "return" value. A QMP error reply
// is returned as a *Error (wrapped); a closed connection as ErrClosed
// (wrapped). args may be nil.
func (c *Client) Execute(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	return c.execute(ctx, cmd, args, nil)
}

// GetFD hands f to QEMU under name (QMP getfd, the descriptor passed as
// SCM_RIGHTS with the command), for commands that take "fd:name" such as
// migrate and migrate-incoming. The caller may close f afterwards.
func (c *Client) GetFD(ctx context.Context, name string, f *os.File) error {
	_, err := c.execute(ctx, "getfd", map[string]string{"fdname": name}, unix.UnixRights(int(f.Fd())))
	return err
}

// execute sends cmd with oob as the message's ancillary data.
func (c *Client) execute(ctx context.Context, cmd string, args any, oob []byte) (json.RawMessage, error) {
	ch := make(chan reply, 1)
	c.mu.Lock()
	if c.closed {
		err := c.err
		c.mu.Unlock()
		return nil, fmt.Errorf("execute %s: %w", cmd, err)
	}
	id := strconv.FormatUint(c.nextID, 10)
	c.nextID++
	c.pending[id] = ch
	c.mu.Unlock()

	b, err := json.Marshal(command{Execute: cmd, Arguments: args, ID: id})
	if err != nil {
		c.forget(id)
		return nil, fmt.Errorf("execute %s: encode arguments: %w", cmd, err)
	}
	if err := c.write(ctx, append(b, '\n'), oob); err != nil {
		c.forget(id)
		if e := c.Err(); e != nil {
			err = e
		}
		return nil, fmt.Errorf("execute %s: %w", cmd, err)
	}
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, fmt.Errorf("execute %s: %w", cmd, r.err)
		}
		return r.ret, nil
	case <-ctx.Done():
		c.forget(id)
		return nil, fmt.Errorf("execute %s: %w", cmd, ctx.Err())
	}
}

func (c *Client) forget(id string) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

func (c *Client) write(ctx context.Context, b, oob []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if dl, ok := ctx.Deadline(); ok {
		c.conn.SetWriteDeadline(dl)
		defer c.conn.SetWriteDeadline(time.Time{})
	}
	if len(oob) > 0 {
		uc, ok := c.conn.(*net.UnixConn)
		if !ok {
			return errors.New("pass a descriptor: not a unix socket")
		}
		_, _, err := uc.WriteMsgUnix(b, oob, nil)
		return err
	}
	_, err := c.conn.Write(b)
	return err
}

// Close ends the connection and waits for the reader to finish. Pending
// commands fail with ErrClosed. QEMU keeps running.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.err == nil {
		c.err = fmt.Errorf("%w: closed by the client", ErrClosed)
	}
	c.mu.Unlock()
	err := c.conn.Close()
	<-c.done
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("close qmp connection: %w", err)
	}
	return nil
}

// Status is the reply of query-status.
type Status struct {
	Running bool   `json:"running"`
	Status  string `json:"status"` // running, paused, prelaunch, shutdown, ...
}

// QueryStatus runs query-status.
func (c *Client) QueryStatus(ctx context.Context) (Status, error) {
	var s Status
	ret, err := c.Execute(ctx, "query-status", nil)
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(ret, &s); err != nil {
		return s, fmt.Errorf("decode query-status reply: %w", err)
	}
	return s, nil
}

// SystemPowerdown presses the virtual power button (ACPI); guests without an
// ACPI daemon ignore it.
func (c *Client) SystemPowerdown(ctx context.Context) error {
	_, err := c.Execute(ctx, "system_powerdown", nil)
	return err
}

// Quit makes QEMU exit at once. The connection closing before the reply
// arrives counts as success: QEMU exited, which is what was asked.
func (c *Client) Quit(ctx context.Context) error {
	_, err := c.Execute(ctx, "quit", nil)
	if errors.Is(err, ErrClosed) {
		return nil
	}
	return err
}

// Stop pauses the guest's CPUs.
func (c *Client) Stop(ctx context.Context) error {
	_, err := c.Execute(ctx, "stop", nil)
	return err
}

// BlockStats returns the bytes read from and written to all of the VM's
// block devices (query-blockstats), summed.
func (c *Client) BlockStats(ctx context.Context) (read, written uint64, err error) {
	raw, err := c.Execute(ctx, "query-blockstats", nil)
	if err != nil {
		return 0, 0, err
	}
	var devs []struct {
		Stats struct {
			RdBytes uint64 `json:"rd_bytes"`
			WrBytes uint64 `json:"wr_bytes"`
		} `json:"stats"`
	}
	if err := json.Unmarshal(raw, &devs); err != nil {
		return 0, 0, fmt.Errorf("decode query-blockstats: %w", err)
	}
	for _, d := range devs {
		read += d.Stats.RdBytes
		written += d.Stats.WrBytes
	}
	return read, written, nil
}

// Cont resumes the guest's CPUs.
func (c *Client) Cont(ctx context.Context) error {
	_, err := c.Execute(ctx, "cont", nil)
	return err
}

// ShutdownData is the payload of the SHUTDOWN event.
type ShutdownData struct {
	Guest  bool   `json:"guest"`  // true when the guest initiated it
	Reason string `json:"reason"` // guest-shutdown, host-qmp-quit, host-signal, ...
}

// ParseShutdown decodes a SHUTDOWN event's data.
func ParseShutdown(ev Event) (ShutdownData, error) {
	var d ShutdownData
	if err := json.Unmarshal(ev.Data, &d); err != nil {
		return d, fmt.Errorf("decode SHUTDOWN event: %w", err)
	}
	return d, nil
}
