package netswitch

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stackvm/stack/internal/filenames"
)

// streamIO is a unix stream listener for one VMM (QEMU: -netdev
// stream,addr.type=unix,addr.path=P,server=off). Frames carry a 4-byte
// big-endian length prefix. One connection is served at a time; a new one
// replaces the old. Reads are buffered (many frames per read); writes of a
// batch are coalesced into one buffer and one write.
//
// A length prefix of zero or beyond the MTU means the stream has lost its
// framing: the connection is closed and counted as a drop. A write that
// cannot finish within the stall timeout closes the connection too, since a
// half-written frame cannot be taken back.
type streamIO struct {
	sw *Switch
	ln *net.UnixListener

	mu      sync.Mutex // guards conn, out, stalled
	conn    *net.UnixConn
	rc      syscall.RawConn
	out     []byte
	stalled bool
	// State of the write in progress, for writeOut.
	written int
	broken  bool
	writeFn func(fd uintptr)

	done chan struct{}
}

// AddStreamPort adds a port that listens for a VMM's stream connection and
// returns the listener's path (0600, in the switch's directory).
func (sw *Switch) AddStreamPort(name string, opts ...PortOption) (string, error) {
	o, err := externalOptions(opts)
	if err != nil {
		return "", fmt.Errorf("add stream port %q: %w", name, err)
	}
	if sw.cfg.Dir == "" {
		return "", fmt.Errorf("add stream port %q: switch has no socket directory", name)
	}
	path := filepath.Join(sw.cfg.Dir, filenames.SwitchStreamSocket(name))
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("add stream port %q: create socket: %w", name, err)
	}
	if err := bindPrivate(fd, path); err != nil {
		unix.Close(fd)
		return "", fmt.Errorf("add stream port %q: %w", name, err)
	}
	if err := unix.Listen(fd, 4); err != nil {
		unix.Close(fd)
		os.Remove(path)
		return "", fmt.Errorf("add stream port %q: listen: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), path)
	l, err := net.FileListener(f)
	f.Close() // FileListener dups the descriptor
	if err != nil {
		os.Remove(path)
		return "", fmt.Errorf("add stream port %q: listen: %w", name, err)
	}
	ul := l.(*net.UnixListener)
	ul.SetUnlinkOnClose(false) // RemovePort removes the file
	s := &streamIO{sw: sw, ln: ul, out: make([]byte, 0, maxBatch*(sw.maxFrame+streamPrefixLen)), done: make(chan struct{})}
	if _, err := sw.addPort(name, KindStream, path, s, true, o); err != nil {
		ul.Close()
		os.Remove(path)
		return "", err
	}
	return path, nil
}

func (s *streamIO) close() error {
	close(s.done)
	err := s.ln.Close()
	s.mu.Lock()
	if s.conn != nil {
		s.conn.Close()
	}
	s.mu.Unlock()
	return err
}

func (s *streamIO) run(fw *forwarder) {
	buf := make([]byte, 256<<10)
	var frames [maxBatch][]byte
	dec := streamDecoder{max: s.sw.maxFrame}
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			select {
			case <-s.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		rc, err := c.SyscallConn()
		if err != nil {
			c.Close()
			continue
		}
		if f, err := c.File(); err == nil { // dup, only to size the buffers
			s.sw.sizeBuffers(int(f.Fd()))
			f.Close()
		}
		s.mu.Lock()
		if s.conn != nil {
			s.conn.Close() // a new VMM replaces the old
		}
		s.conn, s.rc, s.stalled = c, rc, false
		s.mu.Unlock()
		s.serve(fw, c, buf, frames[:], dec)
		s.mu.Lock()
		if s.conn == c {
			s.conn, s.rc = nil, nil
		}
		s.mu.Unlock()
		c.Close()
	}
}

// serve reads frames from one connection until it ends or breaks framing.
func (s *streamIO) serve(fw *forwarder, c *net.UnixConn, buf []byte, frames [][]byte, dec streamDecoder) {
	have := 0
	for {
		n, err := c.Read(buf[have:])
		have += n
		start, k := 0, 0
		for {
			f, used, derr := dec.next(buf[start:have])
			if derr != nil {
				fw.src.rxDrops.Add(1)
				s.sw.log.Warn("stream port sent a bad length prefix; disconnecting", "port", fw.src.name, "err", derr)
				if k > 0 {
					fw.forward(frames[:k])
				}
				return
			}
			if used == 0 {
				break
			}
			frames[k] = f
			k++
			start += used
			if k == maxBatch {
				fw.forward(frames[:k])
				k = 0
			}
		}
		if k > 0 {
			fw.forward(frames[:k])
		}
		// Keep the partial frame at the front of the buffer.
		have = copy(buf, buf[start:have])
		if err != nil {
			return
		}
	}
}

func (s *streamIO) write(frames [][]byte, _ *sendBatch) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil {
		return 0
	}
	out := s.out[:0]
	for _, f := range frames {
		out = appendStreamFrame(out, f)
	}
	s.out = out
	s.written, s.broken = 0, false
	if s.writeFn == nil {
		s.writeFn = s.writeOut // made once: a closure per call would allocate
	}
	s.rc.Control(s.writeFn)
	if s.broken {
		s.conn.Close()
		return 0
	}
	if s.written == 0 {
		return 0
	}
	return len(frames)
}

// writeOut writes s.out under RawConn.Control with s.mu held. A batch that
// cannot start within the stall timeout is dropped whole (framing intact);
// one that started must finish, or the connection is broken.
func (s *streamIO) writeOut(fd uintptr) {
	var waited time.Duration
	stall := s.sw.cfg.StallTimeout
	for s.written < len(s.out) {
		n, err := unix.Write(int(fd), s.out[s.written:])
		if n > 0 {
			s.written += n
			s.stalled = false
			continue
		}
		if err == unix.EINTR {
			continue
		}
		if err != unix.EAGAIN {
			s.broken = true
			return
		}
		if s.written == 0 && (s.stalled || waited >= stall) {
			s.stalled = true
			return
		}
		if s.written > 0 && waited >= 50*stall {
			s.broken = true // a frame is half out and the peer is gone
			return
		}
		waited += waitWritable(fd, stall)
	}
}
