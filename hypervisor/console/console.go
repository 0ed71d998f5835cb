// Package console owns a VM's serial console on the host: the Relay that
// connects to the VMM's console socket, keeps a size-capped log file (one
// rotated predecessor kept) and serves a socket where any number of clients
// see the output live and type into the guest; and Tail, which reads the last
// lines back across the rotation.
//
// The relay runs in whichever host process owns the VM (a test, the
// supervisor). Output the guest writes while no relay is connected is lost:
// QEMU's socket chardev drops writes without a peer. QEMU's own chardev
// logfile= option would catch it, but it grows without bound for the life of
// the VM, so instead the qemu driver can start the guest paused until the
// relay is connected (see qemu.Options.BeforeBoot).
package console

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DefaultMaxBytes caps a console log when no cap is given.
const DefaultMaxBytes = 1 << 20

// RotatedPath is where a log's previous contents go on rotation (its name
// matches filenames.ConsoleLogOld for the default log name).
func RotatedPath(logPath string) string { return logPath + ".1" }

// Log is an append-only file capped at Max bytes: a write that would take it
// over the cap first moves the file to RotatedPath (replacing the older one)
// and starts a new one. Together the two files hold at least the last Max
// bytes of output and at most 2*Max (plus one oversized write).
type Log struct {
	path string
	max  int64
	f    *os.File
	size int64
	// Rotated, when set, is called with the new file after a rotation.
	Rotated func(*os.File)
}

// OpenLog opens (appending) or creates the log at path with mode 0600.
func OpenLog(path string, max int64) (*Log, error) {
	if max <= 0 {
		max = DefaultMaxBytes
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open console log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("stat console log: %w", err)
	}
	return &Log{path: path, max: max, f: f, size: st.Size()}, nil
}

// Write appends p, rotating first when p would take the file over the cap.
func (l *Log) Write(p []byte) (int, error) {
	if l.size > 0 && l.size+int64(len(p)) > l.max {
		if err := l.rotate(); err != nil {
			return 0, err
		}
	}
	n, err := l.f.Write(p)
	l.size += int64(n)
	if err != nil {
		return n, fmt.Errorf("write console log: %w", err)
	}
	return n, nil
}

func (l *Log) rotate() error {
	if err := l.f.Close(); err != nil {
		return fmt.Errorf("close console log for rotation: %w", err)
	}
	if err := os.Rename(l.path, RotatedPath(l.path)); err != nil {
		return fmt.Errorf("rotate console log: %w", err)
	}
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("reopen console log: %w", err)
	}
	l.f, l.size = f, 0
	if l.Rotated != nil {
		l.Rotated(f)
	}
	return nil
}

// Close closes the file.
func (l *Log) Close() error { return l.f.Close() }

// Tail returns the last n lines of the log at logPath, continuing into its
// rotated predecessor when the current file holds fewer. Carriage returns
// (serial consoles send CRLF) are dropped; a final line without a newline is
// included. It fails (wrapping fs.ErrNotExist) only when neither file exists.
func Tail(logPath string, n int) ([]string, error) {
	lines, _, err := tail(logPath, n, false)
	return lines, err
}

// TailFrom is Tail without a last line still being written, and the offset
// in the current log where what it read ends: Follow from there continues
// without losing or repeating a line.
func TailFrom(logPath string, n int) (lines []string, end int64, err error) {
	return tail(logPath, n, true)
}

func tail(logPath string, n int, completeOnly bool) (lines []string, end int64, err error) {
	cur, errCur := os.ReadFile(logPath)
	if n <= 0 {
		return nil, int64(len(cur)), nil
	}
	old, errOld := os.ReadFile(RotatedPath(logPath))
	if errCur != nil && !errors.Is(errCur, fs.ErrNotExist) {
		return nil, 0, fmt.Errorf("read console log: %w", errCur)
	}
	if errOld != nil && !errors.Is(errOld, fs.ErrNotExist) {
		return nil, 0, fmt.Errorf("read rotated console log: %w", errOld)
	}
	if errCur != nil && errOld != nil {
		return nil, 0, fmt.Errorf("read console log %s: %w", logPath, fs.ErrNotExist)
	}
	end = int64(len(cur))
	// The rotated file's last line may be continued by the current file's
	// first bytes, so join before splitting. A last line without its
	// newline is left to Follow, which reads from end on.
	all := append(old, cur...)
	if i := bytes.LastIndexByte(all, '\n'); completeOnly && i+1 < len(all) && errCur == nil {
		end -= int64(len(all) - (i + 1))
		all = all[:i+1]
	}
	all = bytes.ReplaceAll(all, []byte("\r"), nil)
	all = bytes.TrimSuffix(all, []byte("\n"))
	if len(all) == 0 {
		return []string{}, max(end, 0), nil
	}
	lines = strings.Split(string(all), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines, max(end, 0), nil
}

// Options configure a Relay.
type Options struct {
	VMMSocket string // the VMM's console socket (we connect to it)
	Socket    string // the socket served to clients, created 0600
	LogPath   string
	MaxBytes  int64 // log cap; 0: DefaultMaxBytes
	Logger    *slog.Logger
}

// clientQueue is how many output chunks a client may lag behind before it
// is disconnected: a stuck client must never stall the guest's console.
const clientQueue = 256

// Relay copies one VM's console between the VMM, the log and clients.
type Relay struct {
	opts Options
	log  *slog.Logger
	vmm  net.Conn
	ln   *net.UnixListener
	file *Log

	wmu sync.Mutex // serialises input to the VMM

	mu      sync.Mutex
	clients map[*client]struct{}
	closed  bool

	wg   sync.WaitGroup
	done chan struct{}
}

type client struct {
	conn net.Conn
	out  chan []byte
	once sync.Once
}

func (c *client) close() { c.once.Do(func() { close(c.out) }) }

// Start connects to the VMM's console socket, retrying until ctx ends while
// the VMM is still creating it, then opens the log and serves Socket.
func Start(ctx context.Context, opts Options) (*Relay, error) {
	lg := opts.Logger
	if lg == nil {
		lg = slog.Default()
	}
	lg = lg.With("component", "console")
	vmm, err := dialRetry(ctx, opts.VMMSocket)
	if err != nil {
		return nil, err
	}
	file, err := OpenLog(opts.LogPath, opts.MaxBytes)
	if err != nil {
		vmm.Close()
		return nil, err
	}
	// A stale socket from an earlier relay would make Listen fail; the
	// path is ours (the VM's private runtime directory).
	if err := os.Remove(opts.Socket); err != nil && !errors.Is(err, fs.ErrNotExist) {
		vmm.Close()
		file.Close()
		return nil, fmt.Errorf("remove stale console socket: %w", err)
	}
	ln, err := listenPrivate(opts.Socket)
	if err != nil {
		vmm.Close()
		file.Close()
		return nil, err
	}
	r := &Relay{
		opts: opts, log: lg, vmm: vmm, ln: ln, file: file,
		clients: make(map[*client]struct{}),
		done:    make(chan struct{}),
	}
	r.wg.Add(2)
	go r.accept()
	go r.pump()
	return r, nil
}

// listenPrivate creates a unix socket that only the owner can connect to.
// The umask is not touched (it is process-wide); the mode is set right after
// bind, and the socket lives in a 0700 directory anyway.
func listenPrivate(path string) (*net.UnixListener, error) {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on console socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("restrict console socket: %w", err)
	}
	return ln, nil
}

func dialRetry(ctx context.Context, path string) (net.Conn, error) {
	var d net.Dialer
	for {
		conn, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			return conn, nil
		}
		if !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("connect to vmm console %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect to vmm console %s: %w (last: %v)", path, ctx.Err(), err)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Done is closed once the relay has stopped (VMM gone or Close called).
func (r *Relay) Done() <-chan struct{} { return r.done }

// Close stops the relay: disconnects clients and the VMM, closes the log and
// removes the client socket. The VMM keeps running.
func (r *Relay) Close() error {
	r.shutdown()
	r.wg.Wait()
	return nil
}

func (r *Relay) shutdown() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.closed = true
	for c := range r.clients {
		c.close()
	}
	r.mu.Unlock()
	r.ln.Close() // also removes the socket file (net unlinks on close)
	r.vmm.Close()
}

// coalesceBelow and coalesceDelay batch the console's trickle (see pump):
// 2 ms is far below what a person at the console notices.
const (
	coalesceBelow = 256
	coalesceDelay = 2 * time.Millisecond
)

// pump copies VMM output to the log and the clients until the VMM closes.
func (r *Relay) pump() {
	defer r.wg.Done()
	defer close(r.done)
	defer r.file.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := r.vmm.Read(buf)
		if n > 0 {
			chunk := append([]byte(nil), buf[:n]...)
			if _, werr := r.file.Write(chunk); werr != nil {
				r.log.Error("console log write failed", "err", werr)
			}
			r.broadcast(chunk)
		}
		if err == nil && n < coalesceBelow {
			// A UART delivers a byte at a time: a short pause lets the
			// next read take a line or a screenful, instead of waking this
			// goroutine (and writing the log) once per byte, which costs
			// the guests CPU time while they boot.
			time.Sleep(coalesceDelay)
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				r.log.Warn("vmm console read ended", "err", err)
			}
			r.shutdown()
			return
		}
	}
}

func (r *Relay) broadcast(chunk []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for c := range r.clients {
		select {
		case c.out <- chunk:
		default:
			r.log.Warn("console client too slow, disconnected")
			delete(r.clients, c)
			c.close()
		}
	}
}

func (r *Relay) accept() {
	defer r.wg.Done()
	for {
		conn, err := r.ln.Accept()
		if err != nil {
			return // listener closed
		}
		c := &client{conn: conn, out: make(chan []byte, clientQueue)}
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			conn.Close()
			return
		}
		r.clients[c] = struct{}{}
		r.mu.Unlock()
		r.wg.Add(2)
		go r.clientOut(c)
		go r.clientIn(c)
	}
}

// clientOut writes queued output to one client; it owns closing the conn.
func (r *Relay) clientOut(c *client) {
	defer r.wg.Done()
	defer c.conn.Close()
	for chunk := range c.out {
		if _, err := c.conn.Write(chunk); err != nil {
			r.drop(c)
			for range c.out {
			}
			return
		}
	}
}

// clientIn forwards one client's keystrokes to the guest.
func (r *Relay) clientIn(c *client) {
	defer r.wg.Done()
	defer r.drop(c)
	buf := make([]byte, 4096)
	for {
		n, err := c.conn.Read(buf)
		if n > 0 {
			r.wmu.Lock()
			_, werr := r.vmm.Write(buf[:n])
			r.wmu.Unlock()
			if werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (r *Relay) drop(c *client) {
	r.mu.Lock()
	delete(r.clients, c)
	r.mu.Unlock()
	c.close()
}

func (r *Relay) clientCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.clients)
}
