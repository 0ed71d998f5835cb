package netswitch

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mmsghdr is struct mmsghdr from <sys/socket.h>: a msghdr and the byte
// count the kernel fills in. x/sys/unix has the constants but not this
// type or the calls, so they are here.
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
	_   [4]byte // pads to the C layout (64 bytes on 64-bit Linux)
}

// The calls below use RawSyscall: every socket is non-blocking and the calls
// are made with MSG_DONTWAIT, so they never block and need not tell the
// scheduler (that costs ~300 ns per call here, more than the batching saves
// per frame at small sizes).

func sendmmsg(fd uintptr, hs []mmsghdr) (int, syscall.Errno) {
	if len(hs) == 0 {
		return 0, 0
	}
	n, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&hs[0])), uintptr(len(hs)), unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, 0, 0)
	return int(n), e
}

func recvmmsg(fd uintptr, hs []mmsghdr) (int, syscall.Errno) {
	n, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&hs[0])), uintptr(len(hs)), unix.MSG_DONTWAIT, 0, 0)
	return int(n), e
}

// setIov points iov at b, which must not be empty.
func setIov(iov *unix.Iovec, b []byte) {
	iov.Base = &b[0]
	iov.SetLen(len(b))
}

// sendBatch is a sender's reusable header array, so that sending never
// allocates. Each forwarding goroutine owns one.
//
// RawConn.Control takes a closure, and a closure made per call escapes and
// allocates; so the write functions are method values made once per
// sendBatch, and their arguments and result travel in its fields.
type sendBatch struct {
	hdrs [maxBatch]mmsghdr
	iovs [maxBatch]unix.Iovec

	src    *port // the port whose forwarder owns the batch
	frames [][]byte
	dgram  *dgramIO
	tap    *tapIO
	sent   int

	dgramFn, tapFn func(fd uintptr)
}

func (b *sendBatch) init() {
	b.dgramFn = b.dgramWrite
	b.tapFn = b.tapWrite
}

// fill prepares hdrs for frames (len(frames) <= maxBatch), addressed to name
// when name is not nil.
func (b *sendBatch) fill(frames [][]byte, name *unix.RawSockaddrUnix, namelen uint32) []mmsghdr {
	for i, f := range frames {
		setIov(&b.iovs[i], f)
		h := &b.hdrs[i].hdr
		h.Iov = &b.iovs[i]
		h.Iovlen = 1
		if name != nil {
			h.Name = (*byte)(unsafe.Pointer(name))
			h.Namelen = namelen
		} else {
			h.Name = nil
			h.Namelen = 0
		}
		h.Control = nil
		h.Controllen = 0
		h.Flags = 0
	}
	return b.hdrs[:len(frames)]
}

// recvBatch is a reader's receive buffers: maxBatch frames, each with room
// for one byte more than the longest valid frame so that an oversize frame
// shows as MSG_TRUNC rather than being silently cut.
type recvBatch struct {
	hdrs   [maxBatch]mmsghdr
	iovs   [maxBatch]unix.Iovec
	names  [maxBatch]unix.RawSockaddrUnix
	bufs   [maxBatch][]byte
	frames [maxBatch][]byte
}

func newRecvBatch(frameCap int) *recvBatch {
	r := &recvBatch{}
	mem := make([]byte, maxBatch*frameCap)
	for i := range r.bufs {
		r.bufs[i] = mem[i*frameCap : (i+1)*frameCap : (i+1)*frameCap]
		setIov(&r.iovs[i], r.bufs[i])
		r.hdrs[i].hdr.Iov = &r.iovs[i]
		r.hdrs[i].hdr.Iovlen = 1
		r.hdrs[i].hdr.Name = (*byte)(unsafe.Pointer(&r.names[i]))
	}
	return r
}

// reset prepares the headers for the next recvmmsg: the kernel overwrites
// the name length, flags and byte count.
func (r *recvBatch) reset() {
	for i := range r.hdrs {
		r.hdrs[i].hdr.Namelen = uint32(unsafe.Sizeof(r.names[i]))
		r.hdrs[i].hdr.Flags = 0
		r.hdrs[i].n = 0
	}
}

// sunPath returns the path in a unix socket address, up to its NUL.
func sunPath(sa *unix.RawSockaddrUnix, namelen uint32) []byte {
	const off = 2 // sun_family
	if namelen <= off {
		return nil
	}
	n := int(namelen) - off
	if n > len(sa.Path) {
		n = len(sa.Path)
	}
	p := unsafe.Slice((*byte)(unsafe.Pointer(&sa.Path[0])), n)
	for i, c := range p {
		if c == 0 {
			return p[:i]
		}
	}
	return p
}

// rawSockaddr builds the kernel form of a unix socket address for path.
func rawSockaddr(path string) (unix.RawSockaddrUnix, uint32, error) {
	var sa unix.RawSockaddrUnix
	if len(path) >= len(sa.Path) {
		return sa, 0, syscall.ENAMETOOLONG
	}
	sa.Family = unix.AF_UNIX
	for i := 0; i < len(path); i++ {
		sa.Path[i] = int8(path[i])
	}
	return sa, uint32(2 + len(path) + 1), nil
}
