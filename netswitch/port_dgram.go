package netswitch

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/stackvm/stack/internal/filenames"
)

// dgramIO is a unix datagram socket carrying one frame per datagram: a
// socket the switch binds at a path and connects to the VMM's socket, or the
// switch's end of a socketpair.
//
// Connecting matters for speed: the kernel limits a datagram socket's
// receive queue to net.unix.max_dgram_qlen (10) for senders that are not its
// peer, so the VMM's frames queue without that limit only once this socket
// is connected to the VMM's. The VMM may not exist yet when the port is
// added and may be restarted; until connected, frames are sent to the VMM's
// path by name and the socket connects when the first datagram from that
// path arrives. A send that finds the peer gone falls back to sending by
// name, which is how a restarted VMM at the same path is found again.
type dgramIO struct {
	f  *os.File
	rc syscall.RawConn

	pair      bool // socketpair: always connected, never by name
	peer      unix.RawSockaddrUnix
	peerLen   uint32
	peerPath  []byte
	connected atomic.Bool
	peerID    atomic.Pointer[fileID] // the socket file connected to
	stalled   atomic.Bool
	stall     time.Duration

	sw  *Switch
	rcv *recvBatch
	// Results of recvOnce.
	rn   int
	rerr syscall.Errno
}

// newDgramSocket makes a non-blocking unix datagram socket with the switch's
// buffer sizes.
func (sw *Switch) newDgramSocket() (int, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("create socket: %w", err)
	}
	sw.sizeBuffers(fd)
	return fd, nil
}

// sizeBuffers sets the socket buffers, beyond net.core.*mem_max when
// privileged. Failure leaves the kernel defaults, which work, more slowly.
func (sw *Switch) sizeBuffers(fd int) {
	n := sw.cfg.SocketBuffer
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, n) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, n)
	}
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, n)
	}
}

func (sw *Switch) newDgramIO(fd int, name string) (*dgramIO, error) {
	f := os.NewFile(uintptr(fd), name)
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("use socket: %w", err)
	}
	return &dgramIO{f: f, rc: rc, stall: sw.cfg.StallTimeout, sw: sw, rcv: newRecvBatch(sw.maxFrame + 1)}, nil
}

// AddDgramPort adds a port for a VMM whose NIC is a unix datagram socket
// bound at vmmPath. It returns the path of the switch's socket, which the
// VMM sends to (QEMU: -netdev dgram,local.path=vmmPath,remote.path=switchPath).
// The VMM need not be running yet. The socket file is created 0600 in the
// switch's directory, replacing a stale one left by an earlier switch.
func (sw *Switch) AddDgramPort(name, vmmPath string, opts ...PortOption) (string, error) {
	o, err := externalOptions(opts)
	if err != nil {
		return "", fmt.Errorf("add dgram port %q: %w", name, err)
	}
	if sw.cfg.Dir == "" {
		return "", fmt.Errorf("add dgram port %q: switch has no socket directory", name)
	}
	path := filepath.Join(sw.cfg.Dir, filenames.SwitchDgramSocket(name))
	peer, peerLen, err := rawSockaddr(vmmPath)
	if err != nil {
		return "", fmt.Errorf("add dgram port %q: vmm socket path: %w", name, err)
	}
	fd, err := sw.newDgramSocket()
	if err != nil {
		return "", fmt.Errorf("add dgram port %q: %w", name, err)
	}
	if err := bindPrivate(fd, path); err != nil {
		unix.Close(fd)
		return "", fmt.Errorf("add dgram port %q: %w", name, err)
	}
	d, err := sw.newDgramIO(fd, path)
	if err != nil {
		os.Remove(path)
		return "", fmt.Errorf("add dgram port %q: %w", name, err)
	}
	d.peer, d.peerLen, d.peerPath = peer, peerLen, []byte(vmmPath)
	d.tryConnect()
	if _, err := sw.addPort(name, KindDgram, path, d, true, o); err != nil {
		d.close()
		os.Remove(path)
		return "", err
	}
	return path, nil
}

// bindPrivate binds fd at path with mode 0600, replacing a stale socket
// file. The umask is not relied upon: the file is chmodded before anyone
// but the caller can have learned its name, and the directory is 0700.
func bindPrivate(fd int, path string) error {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return fmt.Errorf("bind %s: exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("remove stale socket: %w", err)
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		return fmt.Errorf("bind %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		os.Remove(path)
		return fmt.Errorf("restrict %s: %w", path, err)
	}
	return nil
}

// AddSocketpair adds a port on a fresh socketpair and returns the other end,
// to be passed to the VMM (QEMU: -netdev dgram,id=n,local.type=fd,local.str=N).
// The caller closes its copy once the VMM has it. No file is created.
func (sw *Switch) AddSocketpair(name string, opts ...PortOption) (*os.File, error) {
	o, err := externalOptions(opts)
	if err != nil {
		return nil, fmt.Errorf("add socketpair port %q: %w", name, err)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("add socketpair port %q: %w", name, err)
	}
	if err := unix.SetNonblock(fds[0], true); err != nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
		return nil, fmt.Errorf("add socketpair port %q: %w", name, err)
	}
	sw.sizeBuffers(fds[0])
	sw.sizeBuffers(fds[1])
	d, err := sw.newDgramIO(fds[0], name)
	if err != nil {
		unix.Close(fds[1])
		return nil, fmt.Errorf("add socketpair port %q: %w", name, err)
	}
	d.pair = true
	d.connected.Store(true)
	if _, err := sw.addPort(name, KindSocketpair, "", d, true, o); err != nil {
		d.close()
		unix.Close(fds[1])
		return nil, err
	}
	return os.NewFile(uintptr(fds[1]), "vmm-"+name), nil
}

// tryConnect connects to the VMM's socket; failure (no VMM yet) is normal.
func (d *dgramIO) tryConnect() {
	if d.pair {
		return
	}
	id, ok := statID(d.peerPath)
	if !ok {
		return
	}
	var err error
	cerr := d.rc.Control(func(fd uintptr) {
		err = unix.Connect(int(fd), &unix.SockaddrUnix{Name: string(d.peerPath)})
	})
	if cerr == nil && err == nil {
		d.peerID.Store(&id)
		d.connected.Store(true)
	}
}

// fileID identifies one socket file.
type fileID struct {
	dev, ino        uint64
	ctimeS, ctimeNS int64
}

func statID(path []byte) (fileID, bool) {
	var st unix.Stat_t
	if unix.Stat(string(path), &st) != nil {
		return fileID{}, false
	}
	return fileID{dev: st.Dev, ino: st.Ino, ctimeS: st.Ctim.Sec, ctimeNS: st.Ctim.Nsec}, true
}

// peerCheckEvery is how often connected datagram ports check that their
// VMM's socket is still the one they connected to.
const peerCheckEvery = 250 * time.Millisecond

// checkPeer notices a VMM restarted at the same path. The kernel keeps a
// connected datagram socket associated with its dead peer until the next
// send fails, and meanwhile refuses datagrams from any other socket (EPERM
// for the new VMM). Nothing signals the death, so the socket file's inode
// is compared with the one connected to: inode and change time, since a
// file system may hand a deleted file's inode number to the next file.
func (d *dgramIO) checkPeer() {
	if d.pair || !d.connected.Load() {
		return
	}
	if id, ok := statID(d.peerPath); ok {
		if old := d.peerID.Load(); old != nil && *old == id {
			return
		}
	}
	// Dissolve the association (AF_UNSPEC), then connect to whatever is
	// at the path now.
	d.connected.Store(false)
	d.rc.Control(func(fd uintptr) {
		sa := unix.RawSockaddr{Family: unix.AF_UNSPEC}
		unix.RawSyscall(unix.SYS_CONNECT, fd, uintptr(unsafe.Pointer(&sa)), unsafe.Sizeof(sa))
	})
	d.tryConnect()
}

func (d *dgramIO) close() error { return d.f.Close() }

// recvOnce is the RawConn.Read callback of the reader; it is a method value
// built once (a closure per call would allocate), with its results in d.
func (d *dgramIO) recvOnce(fd uintptr) bool {
	d.rcv.reset()
	d.rn, d.rerr = recvmmsg(fd, d.rcv.hdrs[:])
	return d.rerr != unix.EAGAIN
}

func (d *dgramIO) run(fw *forwarder) {
	r := d.rcv
	var frames [maxBatch][]byte
	recv := d.recvOnce
	for {
		if err := d.rc.Read(recv); err != nil {
			return // closed
		}
		if d.rerr != 0 {
			// A pending socket error (a send that found no peer) is
			// reported once by the next receive; nothing to do.
			continue
		}
		n := d.rn
		k := 0
		var drops uint64
		connectNeeded := false
		for i := 0; i < n; i++ {
			h := &r.hdrs[i]
			if !d.pair && !d.connected.Load() {
				// Unconnected, the socket hears anyone who can reach it; only
				// the VMM's path is a port's peer.
				if !bytes.Equal(sunPath(&r.names[i], h.hdr.Namelen), d.peerPath) {
					drops++
					continue
				}
				connectNeeded = true
			}
			if h.hdr.Flags&unix.MSG_TRUNC != 0 {
				drops++ // longer than any valid frame
				continue
			}
			frames[k] = r.bufs[i][:h.n]
			k++
		}
		if drops > 0 {
			fw.src.rxDrops.Add(drops)
		}
		if connectNeeded {
			d.tryConnect()
		}
		if k > 0 {
			fw.forward(frames[:k])
		}
	}
}

func (d *dgramIO) write(frames [][]byte, b *sendBatch) int {
	b.frames, b.dgram, b.sent = frames, d, 0
	d.rc.Control(b.dgramFn)
	b.frames, b.dgram = nil, nil
	return b.sent
}

// dgramWrite sends b.frames to b.dgram; it runs under RawConn.Control.
func (b *sendBatch) dgramWrite(fd uintptr) {
	d, frames := b.dgram, b.frames
	var waited time.Duration
	for b.sent < len(frames) {
		var hs []mmsghdr
		if d.connected.Load() {
			hs = b.fill(frames[b.sent:], nil, 0)
		} else {
			hs = b.fill(frames[b.sent:], &d.peer, d.peerLen)
		}
		n, errno := sendmmsg(fd, hs)
		switch {
		case errno == 0:
			b.sent += n
			if d.stalled.Load() {
				d.stalled.Store(false)
			}
		case errno == unix.EAGAIN || errno == unix.ENOBUFS:
			if d.stalled.Load() || waited >= d.stall {
				d.stalled.Store(true)
				return
			}
			waited += waitWritable(fd, d.stall-waited)
		case !d.pair && d.connected.Load() && (errno == unix.ECONNREFUSED || errno == unix.ENOTCONN):
			// The VMM's socket went away; the kernel has dropped the
			// association. Send by name from now on.
			d.connected.Store(false)
		default:
			// Nobody at the path (ECONNREFUSED, ENOENT) or a frame the
			// peer cannot take: drop what is left of this batch.
			return
		}
	}
}

// waitWritable waits up to max for fd to be writable and returns how long it
// waited. A datagram socket sending by name reports writable even when the
// receiver's queue is full, so the wait is at least a short sleep: the
// caller retries rather than spinning.
func waitWritable(fd uintptr, max time.Duration) time.Duration {
	start := time.Now()
	ms := int(max / time.Millisecond)
	if ms < 1 {
		ms = 1
	}
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	_, err := unix.Poll(fds, ms)
	if err != nil && !errors.Is(err, unix.EINTR) {
		time.Sleep(50 * time.Microsecond)
	}
	el := time.Since(start)
	if el < 50*time.Microsecond {
		time.Sleep(50 * time.Microsecond)
		el = time.Since(start)
	}
	return el
}
