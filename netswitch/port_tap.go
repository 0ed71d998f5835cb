package netswitch

import (
	"fmt"
	"os"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// tapIO is a TAP device created by the switch (needs CAP_NET_ADMIN). The
// kernel offers one frame per read or write on a TAP descriptor; reads are
// still gathered into batches before forwarding.
type tapIO struct {
	f    *os.File
	rc   syscall.RawConn
	link netlink.Link
	rcv  *recvBatch
	// Results of readBatch.
	frames [maxBatch][]byte
	k      int
	drops  uint64
}

// AddTAP creates TAP device ifname, brings it up and attaches it as a port.
// The device exists only as long as the port: it is non-persistent and is
// also deleted explicitly on removal.
func (sw *Switch) AddTAP(name, ifname string, opts ...PortOption) error {
	o, err := externalOptions(opts)
	if err != nil {
		return fmt.Errorf("add tap port %q: %w", name, err)
	}
	la := netlink.NewLinkAttrs()
	la.Name = ifname
	la.MTU = sw.cfg.MTU
	tap := &netlink.Tuntap{
		LinkAttrs:  la,
		Mode:       netlink.TUNTAP_MODE_TAP,
		Flags:      netlink.TUNTAP_NO_PI | netlink.TUNTAP_ONE_QUEUE,
		Queues:     1,
		NonPersist: true,
	}
	if err := netlink.LinkAdd(tap); err != nil {
		return fmt.Errorf("add tap port %q: create %s: %w", name, ifname, err)
	}
	if len(tap.Fds) != 1 {
		for _, f := range tap.Fds {
			f.Close()
		}
		return fmt.Errorf("add tap port %q: create %s: got %d queues", name, ifname, len(tap.Fds))
	}
	f := tap.Fds[0]
	fail := func(err error) error {
		f.Close()
		netlink.LinkDel(tap)
		return fmt.Errorf("add tap port %q: %w", name, err)
	}
	// netlink opened the descriptor non-blocking and wrapped it after
	// TUNSETIFF, so the runtime poller already handles it.
	nf := f
	rc, err := nf.SyscallConn()
	if err != nil {
		return fail(err)
	}
	if err := netlink.LinkSetUp(tap); err != nil {
		return fail(fmt.Errorf("bring %s up: %w", ifname, err))
	}
	t := &tapIO{f: nf, rc: rc, link: tap, rcv: newRecvBatch(sw.maxFrame + 1)}
	if _, err := sw.addPort(name, KindTAP, "", t, true, o); err != nil {
		nf.Close()
		netlink.LinkDel(tap)
		return err
	}
	return nil
}

func (t *tapIO) close() error {
	err := t.f.Close()
	// Closing the last descriptor of a non-persistent TAP deletes it; the
	// explicit delete covers a device some other process holds open.
	if derr := netlink.LinkDel(t.link); derr != nil && err == nil {
		if _, lerr := netlink.LinkByName(t.link.Attrs().Name); lerr == nil {
			err = derr
		}
	}
	return err
}

// readBatch reads up to maxBatch frames; it is RawConn.Read's callback, a
// method value made once, with results in t.
func (t *tapIO) readBatch(fd uintptr) bool {
	t.k, t.drops = 0, 0
	for t.k < maxBatch {
		n, err := unix.Read(int(fd), t.rcv.bufs[t.k])
		if err != nil {
			return t.k > 0 || err != unix.EAGAIN
		}
		if n >= len(t.rcv.bufs[t.k]) {
			t.drops++ // longer than any valid frame
			continue
		}
		t.frames[t.k] = t.rcv.bufs[t.k][:n]
		t.k++
	}
	return true
}

func (t *tapIO) run(fw *forwarder) {
	read := t.readBatch
	for {
		if err := t.rc.Read(read); err != nil {
			return
		}
		if t.drops > 0 {
			fw.src.rxDrops.Add(t.drops)
		}
		if t.k > 0 {
			fw.forward(t.frames[:t.k])
		}
	}
}

func (t *tapIO) write(frames [][]byte, b *sendBatch) int {
	b.frames, b.tap, b.sent = frames, t, 0
	t.rc.Control(b.tapFn)
	b.frames, b.tap = nil, nil
	return b.sent
}

// tapWrite writes b.frames to the TAP, one frame per write (all a TAP
// descriptor offers); a full queue (txqueuelen) or a down device drops the
// rest.
func (b *sendBatch) tapWrite(fd uintptr) {
	for _, f := range b.frames {
		for {
			_, err := unix.Write(int(fd), f)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return
			}
			break
		}
		b.sent++
	}
}
