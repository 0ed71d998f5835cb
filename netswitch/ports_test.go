package netswitch

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// vmm is a fake VMM NIC on a unix datagram socket, like QEMU's -netdev dgram.
type vmm struct {
	c      *net.UnixConn
	remote *net.UnixAddr
}

func newVMM(t *testing.T, local, remote string) *vmm {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: local, Net: "unixgram"})
	if err != nil {
		t.Fatalf("bind vmm socket: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return &vmm{c: c, remote: &net.UnixAddr{Name: remote, Net: "unixgram"}}
}

func (v *vmm) send(t *testing.T, f []byte) {
	t.Helper()
	if _, err := v.c.WriteToUnix(f, v.remote); err != nil {
		t.Fatalf("vmm send: %v", err)
	}
}

// recv waits for a frame; nil on timeout.
func recvDgram(c interface {
	SetReadDeadline(time.Time) error
	Read([]byte) (int, error)
}, wait time.Duration) []byte {
	buf := make([]byte, 70000)
	c.SetReadDeadline(time.Now().Add(wait))
	n, err := c.Read(buf)
	if err != nil {
		return nil
	}
	return buf[:n]
}

func TestDgramPorts(t *testing.T) {
	dir := t.TempDir()
	swDir := filepath.Join(dir, "net")
	p1 := filepath.Join(dir, "vm1.sock")
	p2 := filepath.Join(dir, "vm2.sock")

	sw, err := New(Config{Name: "t", Dir: swDir})
	if err != nil {
		t.Fatal(err)
	}
	// vm1 exists before its port; vm2 only after (the switch comes first in
	// the engine's order).
	v1 := newVMM(t, p1, "")
	sp1, err := sw.AddDgramPort("vm1", p1)
	if err != nil {
		t.Fatal(err)
	}
	v1.remote.Name = sp1
	sp2, err := sw.AddDgramPort("vm2", p2)
	if err != nil {
		t.Fatal(err)
	}
	v2 := newVMM(t, p2, sp2)

	check := func(sw *Switch) {
		t.Helper()
		fb := frame(broadcast, mac(1), 100)
		v1.send(t, fb)
		if got := recvDgram(v2.c, 5*time.Second); string(got) != string(fb) {
			t.Fatalf("vm2 did not get vm1's broadcast (got %d bytes)", len(got))
		}
		fu := frame(mac(1), mac(2), 1500)
		v2.send(t, fu)
		if got := recvDgram(v1.c, 5*time.Second); string(got) != string(fu) {
			t.Fatalf("vm1 did not get vm2's unicast (got %d bytes)", len(got))
		}
		// An oversize datagram is dropped and counted.
		before, _ := sw.PortStats("vm1")
		v1.send(t, frame(mac(2), mac(1), 3000))
		waitFor(t, func() bool { s, _ := sw.PortStats("vm1"); return s.RxDrops > before.RxDrops })
	}
	check(sw)

	// A stranger who can reach the socket is not a peer.
	stranger := newVMM(t, filepath.Join(dir, "x.sock"), sp2)
	stranger.c.WriteToUnix(frame(broadcast, mac(7), 40), stranger.remote)
	if got := recvDgram(v1.c, 200*time.Millisecond); got != nil {
		t.Fatalf("a stranger's frame was forwarded")
	}

	// The switch restarts: the VMMs keep their sockets and keep working.
	if err := sw.Close(); err != nil {
		t.Fatal(err)
	}
	sw2, err := New(Config{Name: "t", Dir: swDir})
	if err != nil {
		t.Fatal(err)
	}
	defer sw2.Close()
	if _, err := sw2.AddDgramPort("vm1", p1); err != nil {
		t.Fatal(err)
	}
	if _, err := sw2.AddDgramPort("vm2", p2); err != nil {
		t.Fatal(err)
	}
	check(sw2)

	// The VMM restarts behind its port (new socket at the same path).
	v2.c.Close()
	os.Remove(p2)
	v2 = newVMM(t, p2, sp2)
	fb := frame(broadcast, mac(2), 60)
	// Until the switch notices the new socket (it checks every
	// peerCheckEvery) the kernel refuses the VMM's sends, as it would
	// QEMU's.
	waitFor(t, func() bool { _, err := v2.c.WriteToUnix(fb, v2.remote); return err == nil })
	if got := recvDgram(v1.c, 5*time.Second); string(got) != string(fb) {
		t.Fatalf("vm1 did not hear restarted vm2")
	}
	fu := frame(mac(2), mac(1), 60)
	v1.send(t, fu)
	if got := recvDgram(v2.c, 5*time.Second); string(got) != string(fu) {
		t.Fatalf("restarted vm2 did not get vm1's unicast")
	}
}

func TestSocketpairPort(t *testing.T) {
	sw := newTestSwitch(t, Config{Name: "t"})
	e1, err := sw.AddSocketpair("a")
	if err != nil {
		t.Fatal(err)
	}
	e1 = pollable(t, e1)
	e2, err := sw.AddSocketpair("b")
	if err != nil {
		t.Fatal(err)
	}
	e2 = pollable(t, e2)
	for i := 0; i < 1000; i++ {
		f := frame(broadcast, mac(1), 64+i)
		if _, err := e1.Write(f); err != nil {
			t.Fatal(err)
		}
		if got := recvDgram(e2, 5*time.Second); string(got) != string(f) {
			t.Fatalf("frame %d lost or changed", i)
		}
	}
	st, _ := sw.PortStats("b")
	if st.TxFrames != 1000 {
		t.Fatalf("b tx_frames = %d, want 1000", st.TxFrames)
	}
}

func TestStreamPort(t *testing.T) {
	sw := newTestSwitch(t, Config{Name: "t", Dir: filepath.Join(t.TempDir(), "n")})
	path, err := sw.AddStreamPort("s")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := sw.AddSocketpair("p")
	if err != nil {
		t.Fatal(err)
	}
	pair = pollable(t, pair)
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// Several frames in one write, one split across writes.
	var buf []byte
	var want [][]byte
	for i := 0; i < 5; i++ {
		f := frame(broadcast, mac(1), 100+i)
		want = append(want, f)
		buf = appendStreamFrame(buf, f)
	}
	if _, err := c.Write(buf[:7]); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	if _, err := c.Write(buf[7:]); err != nil {
		t.Fatal(err)
	}
	for i, w := range want {
		if got := recvDgram(pair, 5*time.Second); string(got) != string(w) {
			t.Fatalf("frame %d lost or changed", i)
		}
	}
	// Frames to the stream port arrive length-prefixed.
	f := frame(mac(1), mac(2), 200)
	if _, err := pair.Write(f); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	hdr := make([]byte, 4)
	if _, err := io.ReadFull(c, hdr); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, binary.BigEndian.Uint32(hdr))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != string(f) {
		t.Fatalf("stream port got %d bytes (%v), want the frame", len(got), err)
	}

	// A bad length prefix disconnects the VMM and counts a drop.
	if _, err := c.Write([]byte{0xff, 0xff, 0xff, 0xff, 1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 10)); !errors.Is(err, io.EOF) {
		t.Fatalf("read after bad prefix: %v, want EOF (disconnected)", err)
	}
	st, _ := sw.PortStats("s")
	if st.RxDrops != 1 || st.RxFrames != 5 {
		t.Fatalf("stream port counters %+v", st)
	}
	// The port accepts the VMM again and the switch is unharmed.
	c2, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	f2 := frame(broadcast, mac(1), 64)
	if _, err := c2.Write(appendStreamFrame(nil, f2)); err != nil {
		t.Fatal(err)
	}
	if got := recvDgram(pair, 5*time.Second); string(got) != string(f2) {
		t.Fatalf("frame after reconnect lost")
	}
}

func TestTAPPort(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("TAP devices need root (CI runs as root)")
	}
	// Everything happens in a network namespace of the test's own: the TAP
	// device, its address and the traffic.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		t.Fatalf("create network namespace: %v", err)
	}
	defer ns.Close()
	defer netns.Set(orig)

	sw := newTestSwitch(t, Config{Name: "t"})
	const name = "stktap0"
	if err := sw.AddTAP("tap", name); err != nil {
		t.Fatal(err)
	}
	pair, err := sw.AddSocketpair("vm")
	if err != nil {
		t.Fatal(err)
	}
	pair = pollable(t, pair)
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatalf("tap %s not created: %v", name, err)
	}
	if l.Attrs().MTU != 1500 || l.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("tap mtu %d flags %v", l.Attrs().MTU, l.Attrs().Flags)
	}
	addr, _ := netlink.ParseAddr("10.99.0.1/24")
	if err := netlink.AddrAdd(l, addr); err != nil {
		t.Fatal(err)
	}
	// The host side sends to 10.99.0.2: its ARP request comes out of the
	// TAP and through the switch to the VM port.
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Sendto(fd, []byte("x"), 0, &unix.SockaddrInet4{Port: 9, Addr: [4]byte{10, 99, 0, 2}}); err != nil {
		t.Fatal(err)
	}
	var arp []byte
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		f := recvDgram(pair, time.Second)
		if len(f) >= 42 && binary.BigEndian.Uint16(f[12:14]) == 0x0806 {
			arp = f
			break
		}
	}
	if arp == nil {
		t.Fatalf("no ARP request from the TAP reached the VM port")
	}
	if got := net.IP(arp[38:42]).String(); got != "10.99.0.2" {
		t.Fatalf("ARP asks for %s", got)
	}
	// The VM answers; the kernel sees the frame arrive on the TAP.
	tapMAC := arp[6:12]
	reply := make([]byte, 42)
	copy(reply[0:6], tapMAC)
	vmMAC := []byte{0x52, 0x54, 0, 0, 0, 0x22}
	copy(reply[6:12], vmMAC)
	binary.BigEndian.PutUint16(reply[12:14], 0x0806)
	copy(reply[14:22], []byte{0, 1, 8, 0, 6, 4, 0, 2})
	copy(reply[22:28], vmMAC)
	copy(reply[28:32], []byte{10, 99, 0, 2})
	copy(reply[32:38], tapMAC)
	copy(reply[38:42], []byte{10, 99, 0, 1})
	if _, err := pair.Write(reply); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		neighs, _ := netlink.NeighList(l.Attrs().Index, netlink.FAMILY_V4)
		for _, n := range neighs {
			if n.IP.String() == "10.99.0.2" && n.HardwareAddr.String() == net.HardwareAddr(vmMAC).String() {
				return true
			}
		}
		return false
	})
	if st, _ := sw.PortStats("tap"); st.RxFrames == 0 || st.TxFrames == 0 {
		t.Fatalf("tap counters %+v", st)
	}
	if err := sw.RemovePort("tap"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, err := netlink.LinkByName(name); return err != nil })
}

// pollable returns f (the VMM's end of a socketpair, which is blocking, as
// a VMM expects) as a non-blocking file that honours deadlines.
func pollable(t *testing.T, f *os.File) *os.File {
	t.Helper()
	fd, err := unix.Dup(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := unix.SetNonblock(fd, true); err != nil {
		t.Fatal(err)
	}
	nf := os.NewFile(uintptr(fd), "vmm-end")
	t.Cleanup(func() { nf.Close() })
	return nf
}

// TestStalledPortDoesNotBlockOthers: a VMM that never reads (a paused VM)
// costs the other ports at most one stall timeout; its frames are dropped
// and counted.
func TestStalledPortDoesNotBlockOthers(t *testing.T) {
	dir := t.TempDir()
	sw := newTestSwitch(t, Config{Name: "t", Dir: filepath.Join(dir, "n"), StallTimeout: 10 * time.Millisecond})
	deadPath := filepath.Join(dir, "dead.sock")
	sp, err := sw.AddDgramPort("dead", deadPath)
	if err != nil {
		t.Fatal(err)
	}
	dead := newVMM(t, deadPath, sp)
	dead.send(t, frame(broadcast, mac(9), 40)) // connects the port; then never reads
	a, err := sw.AddSocketpair("a")
	if err != nil {
		t.Fatal(err)
	}
	a = pollable(t, a)
	b, err := sw.AddSocketpair("b")
	if err != nil {
		t.Fatal(err)
	}
	b = pollable(t, b)
	recvDgram(a, 100*time.Millisecond) // dead's broadcast
	recvDgram(b, 100*time.Millisecond)

	const n = 2000
	start := time.Now()
	got := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		for got < n {
			if recvDgram(b, 5*time.Second) == nil {
				return
			}
			got++
		}
	}()
	f := frame(broadcast, mac(1), 200)
	for i := 0; i < n; i++ {
		if _, err := a.Write(f); err != nil {
			// The pair's own buffer is full: let the switch catch up.
			time.Sleep(time.Millisecond)
			i--
		}
	}
	<-done
	el := time.Since(start)
	if got != n {
		t.Fatalf("b got %d of %d broadcasts while dead stalled", got, n)
	}
	st, _ := sw.PortStats("dead")
	if st.TxDrops == 0 {
		t.Fatalf("dead port dropped nothing: %+v", st)
	}
	t.Logf("%d broadcasts in %v with a stalled port; dead port tx %d, drops %d", n, el, st.TxFrames, st.TxDrops)
}
