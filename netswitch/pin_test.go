package netswitch

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"
)

func addPinned(t *testing.T, sw *Switch, name string, macs ...MAC) *fakePort {
	t.Helper()
	return addFake(t, sw, name, PinMACs(macs...))
}

func wantSpoofDrops(t *testing.T, sw *Switch, port string, want uint64) {
	t.Helper()
	st, _ := sw.PortStats(port)
	if st.SpoofDrops != want || st.RxDrops != want {
		t.Fatalf("port %s: %d spoof drops, %d rx drops; want %d of each", port, st.SpoofDrops, st.RxDrops, want)
	}
}

func TestPinnedMACs(t *testing.T) {
	clk := newFakeClock()
	sw := newTestSwitch(t, Config{Name: "t", MACAge: 10 * time.Second, Now: clk.Now})
	a := addPinned(t, sw, "a", mac(1))
	b := addPinned(t, sw, "b", mac(2))
	c := addFake(t, sw, "c") // unpinned: a TAP, a test port

	// A pinned port sends from its address as usual.
	f := frame(broadcast, mac(1), 40)
	a.Inject(f)
	wantFrames(t, b, f)
	wantFrames(t, c, f)

	// From any other address its frames are dropped and counted.
	a.Inject(frame(broadcast, mac(9), 40))
	a.Inject(frame(mac(2), mac(9), 40))
	wantFrames(t, b)
	wantFrames(t, c)
	wantSpoofDrops(t, sw, "a", 2)

	// Nobody may send from a pinned address: the frame is dropped, and the
	// address stays behind its port (the attack that drew the gateway's
	// traffic to a guest).
	c.Inject(frame(broadcast, mac(2), 40))
	wantFrames(t, a)
	wantFrames(t, b)
	wantSpoofDrops(t, sw, "c", 1)
	f = frame(mac(2), mac(1), 40)
	a.Inject(f)
	wantFrames(t, b, f)
	wantFrames(t, c)

	// An unpinned port still learns, and its address may move.
	c.Inject(frame(broadcast, mac(7), 40))
	a.take()
	b.take()
	f = frame(mac(7), mac(1), 40)
	a.Inject(f)
	wantFrames(t, c, f)
	wantFrames(t, b)

	// Pinned addresses do not age: after MACAge without a frame from b,
	// b's address is still unicast, while c's learned one has expired.
	clk.Advance(11 * time.Second)
	if n := sw.Expire(); n != 1 {
		t.Fatalf("Expire removed %d entries, want c's 1", n)
	}
	f = frame(mac(2), mac(1), 40)
	a.Inject(f)
	wantFrames(t, b, f)
	wantFrames(t, c)
	if st, _ := sw.PortStats("b"); st.MACs != 1 {
		t.Fatalf("b reports %d addresses, want its pinned 1", st.MACs)
	}

	// A pinned address cannot be pinned again while its port lives...
	if _, err := sw.AddInternal("b2", func([]byte) {}, PinMACs(mac(2))); err == nil {
		t.Fatalf("a second port pinned b's address")
	}
	if _, ok := sw.PortStats("b2"); ok {
		t.Fatalf("a refused port was added")
	}
	// ...and can once it is gone (a VM restarted behind a new port).
	if err := sw.RemovePort("b"); err != nil {
		t.Fatal(err)
	}
	b2 := addPinned(t, sw, "b2", mac(2))
	f = frame(mac(2), mac(1), 40)
	a.Inject(f)
	wantFrames(t, b2, f)
	wantFrames(t, c)

	// Pinning an address learned behind another port moves it.
	c.Inject(frame(broadcast, mac(8), 40))
	a.take()
	b2.take()
	d := addPinned(t, sw, "d", mac(8))
	f = frame(mac(8), mac(1), 40)
	a.Inject(f)
	wantFrames(t, d, f)
	wantFrames(t, c)
	if st, _ := sw.PortStats("c"); st.MACs != 0 {
		t.Fatalf("c still counts %d addresses after its address was pinned to d", st.MACs)
	}

	// Group and zero addresses cannot be pinned.
	for _, m := range []MAC{broadcast, {0x01, 0, 0x5e, 0, 0, 1}, {}} {
		if _, err := sw.AddInternal("bad", func([]byte) {}, PinMACs(m)); err == nil {
			t.Fatalf("pinned %s", m)
		}
	}
}

func TestPinnedDgramPort(t *testing.T) {
	dir := t.TempDir()
	sw := newTestSwitch(t, Config{Name: "t", Dir: dir + "/net"})
	vmmPath := dir + "/vm1.sock"
	v := newVMM(t, vmmPath, "")
	sp, err := sw.AddDgramPort("vm1", vmmPath, PinMACs(mac(1)))
	if err != nil {
		t.Fatal(err)
	}
	v.remote.Name = sp
	b := addFake(t, sw, "b")
	v.send(t, frame(broadcast, mac(5), 40))
	waitFor(t, func() bool { st, _ := sw.PortStats("vm1"); return st.SpoofDrops == 1 })
	f := frame(broadcast, mac(1), 40)
	v.send(t, f)
	waitFor(t, func() bool { st, _ := sw.PortStats("vm1"); return st.RxFrames == 1 })
	wantFrames(t, b, f)
	if _, err := sw.AddStreamPort("s", QueuePerSource(4)); err == nil {
		t.Fatalf("a stream port took an internal port's option")
	}
}

func ip4(s string) netip.Addr { return netip.MustParseAddr(s) }

// ipv4Frame is an IPv4 header from sip after an Ethernet header.
func ipv4Frame(dst, src MAC, sip string) []byte {
	f := frame(dst, src, 40)
	f[EthHeaderLen] = 0x45
	a := ip4(sip).As4()
	copy(f[EthHeaderLen+12:], a[:])
	return f
}

// arpFrame is an ARP packet from sender (sha, spa).
func arpFrame(src, sha MAC, spa string) []byte {
	f := frame(broadcast, src, 28)
	binary.BigEndian.PutUint16(f[12:14], 0x0806)
	a := f[EthHeaderLen:]
	binary.BigEndian.PutUint16(a[0:2], 1)
	binary.BigEndian.PutUint16(a[2:4], 0x0800)
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:8], 1)
	copy(a[8:14], sha[:])
	p := ip4(spa).As4()
	copy(a[14:18], p[:])
	return f
}

// tagged puts an 802.1Q tag into f.
func tagged(f []byte) []byte {
	t := append([]byte(nil), f[:12]...)
	t = append(t, 0x81, 0x00, 0, 1)
	return append(t, f[12:]...)
}

func TestPinnedIPs(t *testing.T) {
	sw := newTestSwitch(t, Config{Name: "t"})
	a := addFake(t, sw, "a", PinMACs(mac(1)), PinIPs(ip4("10.0.0.1")))
	b := addFake(t, sw, "b", PinMACs(mac(2)), PinIPs(ip4("10.0.0.2")))
	c := addFake(t, sw, "c") // unpinned

	pass := func(from *fakePort, f []byte) {
		t.Helper()
		from.Inject(f)
		for _, p := range []*fakePort{a, b, c} {
			if p != from {
				wantFrames(t, p, f)
			}
		}
	}
	drop := func(from *fakePort, f []byte) {
		t.Helper()
		before, _ := sw.PortStats(from.Name())
		from.Inject(f)
		for _, p := range []*fakePort{a, b, c} {
			wantFrames(t, p)
		}
		after, _ := sw.PortStats(from.Name())
		if after.SpoofDrops != before.SpoofDrops+1 {
			t.Fatalf("%s: spoofed frame not counted", from.Name())
		}
	}

	pass(a, ipv4Frame(broadcast, mac(1), "10.0.0.1"))
	pass(a, ipv4Frame(broadcast, mac(1), "0.0.0.0")) // a DHCP client
	drop(a, ipv4Frame(broadcast, mac(1), "10.0.0.9"))
	drop(a, ipv4Frame(broadcast, mac(1), "10.0.0.2"))
	pass(a, arpFrame(mac(1), mac(1), "10.0.0.1"))
	pass(a, arpFrame(mac(1), mac(1), "0.0.0.0")) // a probe
	// Answering ARP for another's address (the gateway's, say) or
	// naming another MAC as sender is refused, tagged or not.
	drop(a, arpFrame(mac(1), mac(1), "10.0.0.2"))
	drop(a, arpFrame(mac(1), mac(1), "10.0.0.7"))
	drop(a, arpFrame(mac(1), mac(9), "10.0.0.1"))
	drop(a, tagged(arpFrame(mac(1), mac(1), "10.0.0.2")))
	drop(a, tagged(ipv4Frame(broadcast, mac(1), "10.0.0.9")))
	// An unpinned port may not claim a pinned address in ARP either; its
	// other traffic is not checked (the gateway checks what it gets).
	drop(c, arpFrame(mac(3), mac(3), "10.0.0.2"))
	pass(c, arpFrame(mac(3), mac(3), "10.0.0.3"))
	pass(c, ipv4Frame(broadcast, mac(3), "10.0.0.2"))

	// A reserved address (the gateway's) is refused to the others in ARP
	// while its port sends from any address.
	gw := addFake(t, sw, "gw", PinMACs(mac(100)), ReserveIPs(ip4("10.0.0.254")))
	pass = func(from *fakePort, f []byte) {
		t.Helper()
		from.Inject(f)
		for _, p := range []*fakePort{a, b, c, gw} {
			if p != from {
				wantFrames(t, p, f)
			}
		}
	}
	pass(gw, ipv4Frame(broadcast, mac(100), "198.51.100.7"))
	pass(gw, arpFrame(mac(100), mac(100), "10.0.0.254"))
	drop(c, arpFrame(mac(3), mac(3), "10.0.0.254"))
	drop(a, arpFrame(mac(1), mac(1), "10.0.0.254"))
	gw.take()

	if _, err := sw.AddInternal("d", func([]byte) {}, PinIPs(ip4("10.0.0.2"))); err == nil {
		t.Fatalf("a second port pinned b's address")
	}
	for _, bad := range []netip.Addr{ip4("fd00::1"), ip4("0.0.0.0"), ip4("224.0.0.1")} {
		if _, err := sw.AddInternal("d", func([]byte) {}, PinIPs(bad)); err == nil {
			t.Fatalf("pinned %v", bad)
		}
	}
	if err := sw.RemovePort("b"); err != nil {
		t.Fatal(err)
	}
	addFake(t, sw, "b2", PinIPs(ip4("10.0.0.2")))
}
