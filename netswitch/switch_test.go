package netswitch

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeClock is an injected clock.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

func mac(last byte) MAC { return MAC{0x52, 0x54, 0, 0, 0, last} }

var broadcast = MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

func frame(dst, src MAC, payloadLen int) []byte {
	f := make([]byte, EthHeaderLen+payloadLen)
	copy(f[0:6], dst[:])
	copy(f[6:12], src[:])
	binary.BigEndian.PutUint16(f[12:14], 0x0800)
	for i := EthHeaderLen; i < len(f); i++ {
		f[i] = byte(i)
	}
	return f
}

// fakePort is an internal port that records what it receives.
type fakePort struct {
	*InternalPort
	mu  sync.Mutex
	got [][]byte
}

func addFake(t *testing.T, sw *Switch, name string, opts ...PortOption) *fakePort {
	t.Helper()
	fp := &fakePort{}
	ip, err := sw.AddInternal(name, func(f []byte) {
		fp.mu.Lock()
		fp.got = append(fp.got, append([]byte(nil), f...))
		fp.mu.Unlock()
	}, opts...)
	if err != nil {
		t.Fatalf("add port %s: %v", name, err)
	}
	fp.InternalPort = ip
	return fp
}

// take returns and clears what the port received.
func (fp *fakePort) take() [][]byte {
	fp.mu.Lock()
	defer fp.mu.Unlock()
	g := fp.got
	fp.got = nil
	return g
}

func newTestSwitch(t *testing.T, cfg Config) *Switch {
	t.Helper()
	sw, err := New(cfg)
	if err != nil {
		t.Fatalf("new switch: %v", err)
	}
	t.Cleanup(func() {
		if err := sw.Close(); err != nil {
			t.Errorf("close switch: %v", err)
		}
	})
	return sw
}

func wantFrames(t *testing.T, fp *fakePort, want ...[]byte) {
	t.Helper()
	got := fp.take()
	if len(got) != len(want) {
		t.Fatalf("port %s got %d frames, want %d", fp.Name(), len(got), len(want))
	}
	for i := range got {
		if string(got[i]) != string(want[i]) {
			t.Fatalf("port %s frame %d differs", fp.Name(), i)
		}
	}
}

func TestLearningAndFlooding(t *testing.T) {
	sw := newTestSwitch(t, Config{Name: "t"})
	a, b, c := addFake(t, sw, "a"), addFake(t, sw, "b"), addFake(t, sw, "c")

	// Unknown destination: flooded to every other port, never back.
	f1 := frame(mac(2), mac(1), 50)
	a.Inject(f1)
	wantFrames(t, a)
	wantFrames(t, b, f1)
	wantFrames(t, c, f1)

	// b answers a, whose address was learned from f1: only a gets it.
	f2 := frame(mac(1), mac(2), 60)
	b.Inject(f2)
	wantFrames(t, a, f2)
	wantFrames(t, b)
	wantFrames(t, c)

	// Now both are known: a to b is unicast.
	f3 := frame(mac(2), mac(1), 70)
	a.Inject(f3)
	wantFrames(t, b, f3)
	wantFrames(t, c)

	// Broadcast and multicast are flooded even though sources are known.
	f4 := frame(broadcast, mac(1), 40)
	a.Inject(f4)
	wantFrames(t, b, f4)
	wantFrames(t, c, f4)
	f5 := frame(MAC{0x01, 0x00, 0x5e, 0, 0, 1}, mac(2), 40)
	b.Inject(f5)
	wantFrames(t, a, f5)
	wantFrames(t, c, f5)

	// A frame to an address behind its own port goes nowhere.
	c.Inject(frame(mac(3), mac(4), 40)) // learns 4 behind c
	a.take()
	b.take()
	c.Inject(frame(mac(4), mac(3), 40))
	wantFrames(t, a)
	wantFrames(t, b)

	// An address that moves follows its new port.
	f6 := frame(mac(9), mac(2), 40) // mac 2 now behind c
	c.Inject(f6)
	a.take()
	b.take()
	f7 := frame(mac(2), mac(1), 40)
	a.Inject(f7)
	wantFrames(t, c, f7)
	wantFrames(t, b)
}

func TestAging(t *testing.T) {
	clk := newFakeClock()
	sw := newTestSwitch(t, Config{Name: "t", MACAge: 10 * time.Second, Now: clk.Now})
	a, b, c := addFake(t, sw, "a"), addFake(t, sw, "b"), addFake(t, sw, "c")
	b.Inject(frame(broadcast, mac(2), 40))
	a.take()
	c.take()

	f := frame(mac(2), mac(1), 40)
	clk.Advance(9 * time.Second)
	a.Inject(f)
	wantFrames(t, b, f)
	wantFrames(t, c) // still learned: unicast

	clk.Advance(2 * time.Second) // 11 s since b was last heard
	a.Inject(f)
	wantFrames(t, b, f)
	wantFrames(t, c, f) // aged out: flooded

	if n := sw.Expire(); n != 1 { // mac 2 (mac 1 was heard 2 s ago)
		t.Fatalf("Expire removed %d entries, want 1", n)
	}
	if st := sw.Stats(); st.MACs != 1 {
		t.Fatalf("table has %d entries, want 1", st.MACs)
	}
	clk.Advance(11 * time.Second)
	if n := sw.Expire(); n != 1 {
		t.Fatalf("Expire removed %d entries, want 1", n)
	}
	for _, p := range sw.Stats().Ports {
		if p.MACs != 0 {
			t.Fatalf("port %s still counts %d addresses", p.Name, p.MACs)
		}
	}
}

func TestBoundedTableUnderRandomMACFlood(t *testing.T) {
	const perPort = 16
	sw := newTestSwitch(t, Config{Name: "t", MaxMACsPerPort: perPort, MaxMACs: 64})
	a, b, c := addFake(t, sw, "a"), addFake(t, sw, "b"), addFake(t, sw, "c")
	b.Inject(frame(broadcast, mac(2), 40))
	c.Inject(frame(broadcast, mac(3), 40))
	a.take()
	b.take()
	c.take()

	// a floods frames from 20000 random source addresses to b's address.
	rng := rand.New(rand.NewPCG(1, 2))
	f := frame(mac(2), MAC{}, 40)
	for i := 0; i < 20000; i++ {
		binary.BigEndian.PutUint32(f[8:12], rng.Uint32())
		f[6] = 0x02 // unicast, locally administered
		a.Inject(f)
	}
	st := sw.Stats()
	if st.MACs > perPort+2 {
		t.Fatalf("table grew to %d entries under the flood, bound is %d", st.MACs, perPort+2)
	}
	if st.LearnRefused == 0 {
		t.Fatalf("no learning was refused")
	}
	// The flood went to b only: b's entry survived.
	if got := len(b.take()); got != 20000 {
		t.Fatalf("b got %d of the flood's 20000 frames", got)
	}
	if got := len(c.take()); got != 0 {
		t.Fatalf("c got %d frames of the flood to b", got)
	}
	// Forwarding between the learned ports still works, as unicast.
	f2 := frame(mac(3), mac(2), 40)
	b.Inject(f2)
	wantFrames(t, c, f2)
	if len(a.take()) != 0 {
		t.Fatalf("a saw unicast traffic between b and c")
	}
	// A new port can still learn: the flooder's limit is its own.
	d := addFake(t, sw, "d")
	d.Inject(frame(broadcast, mac(4), 40))
	b.take()
	c.take()
	f3 := frame(mac(4), mac(2), 40)
	b.Inject(f3)
	wantFrames(t, d, f3)
	wantFrames(t, c)
}

func TestCountersAndBadFrames(t *testing.T) {
	sw := newTestSwitch(t, Config{Name: "t", MTU: 1500})
	a, b := addFake(t, sw, "a"), addFake(t, sw, "b")
	good := frame(broadcast, mac(1), 100)
	a.Inject(good)
	a.Inject(make([]byte, 13))               // runt
	a.Inject(frame(broadcast, mac(1), 1501)) // oversize untagged
	a.Inject(frame(broadcast, MAC{1}, 40))   // multicast source
	tagged := frame(broadcast, mac(1), 1504) // 1500 + tag fits
	binary.BigEndian.PutUint16(tagged[12:14], 0x8100)
	a.Inject(tagged)
	if got := len(b.take()); got != 2 {
		t.Fatalf("b got %d frames, want the 2 valid ones", got)
	}
	pa, _ := sw.PortStats("a")
	pb, _ := sw.PortStats("b")
	if pa.RxFrames != 2 || pa.RxBytes != uint64(len(good)+len(tagged)) || pa.RxDrops != 3 {
		t.Fatalf("a counters %+v", pa)
	}
	if pb.TxFrames != 2 || pb.TxBytes != uint64(len(good)+len(tagged)) || pb.TxDrops != 0 {
		t.Fatalf("b counters %+v", pb)
	}
}

func TestRemovePortAndIsolation(t *testing.T) {
	sw1 := newTestSwitch(t, Config{Name: "n1"})
	sw2 := newTestSwitch(t, Config{Name: "n2"})
	a, b := addFake(t, sw1, "a"), addFake(t, sw1, "b")
	x := addFake(t, sw2, "a") // same port name on another network
	a.Inject(frame(broadcast, mac(1), 40))
	if len(b.take()) != 1 || len(x.take()) != 0 {
		t.Fatalf("broadcast crossed networks or was lost")
	}
	if err := sw1.RemovePort("b"); err != nil {
		t.Fatal(err)
	}
	if err := sw1.RemovePort("b"); !errors.Is(err, ErrNoPort) {
		t.Fatalf("second remove: %v, want ErrNoPort", err)
	}
	a.Inject(frame(broadcast, mac(1), 40))
	if len(b.take()) != 0 {
		t.Fatalf("removed port still receives")
	}
	if _, err := sw1.AddInternal("a", func([]byte) {}); err == nil {
		t.Fatalf("duplicate port name accepted")
	}
}

func TestForwardDoesNotAllocate(t *testing.T) {
	sw := newTestSwitch(t, Config{Name: "t"})
	sink, err := sw.AddSocketpair("sink")
	if err != nil {
		t.Fatal(err)
	}
	sink = pollable(t, sink)
	src := addFake(t, sw, "src")
	_ = src
	// Learn sink's address behind its port.
	if _, err := sink.Write(frame(broadcast, mac(2), 40)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return sw.Stats().MACs == 1 })
	frames := make([][]byte, maxBatch)
	for i := range frames {
		frames[i] = frame(mac(2), mac(1), 1000)
	}
	fw := sw.newForwarder(src.p)
	fw.forward(frames) // sizes the queues
	buf := make([]byte, 2048)
	drain := func() {
		for {
			sink.SetReadDeadline(time.Now().Add(time.Millisecond))
			if _, err := sink.Read(buf); err != nil {
				return
			}
		}
	}
	drain()
	// 21 batches of 32 KiB fit the socket buffer, so nothing waits.
	allocs := testing.AllocsPerRun(20, func() {
		fw.forward(frames)
	})
	if st, _ := sw.PortStats("sink"); st.TxFrames < 20*maxBatch {
		t.Fatalf("sink took only %d frames", st.TxFrames)
	}
	if allocs > 0 {
		t.Fatalf("forwarding a batch of %d frames allocated %.1f times", maxBatch, allocs)
	}
}

func TestForwardToStreamDoesNotAllocate(t *testing.T) {
	sw := newTestSwitch(t, Config{Name: "t", Dir: filepath.Join(t.TempDir(), "n")})
	path, err := sw.AddStreamPort("sink")
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	src := addFake(t, sw, "src")
	if _, err := c.Write(appendStreamFrame(nil, frame(broadcast, mac(2), 40))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return sw.Stats().MACs == 1 })
	frames := make([][]byte, maxBatch)
	for i := range frames {
		frames[i] = frame(mac(2), mac(1), 1000)
	}
	fw := sw.newForwarder(src.p)
	fw.forward(frames)
	// 22 batches (AllocsPerRun adds a warm-up run) of 33 KiB fit the
	// socket buffer the switch sizes (as root), so nothing waits.
	allocs := testing.AllocsPerRun(20, func() { fw.forward(frames) })
	if st, _ := sw.PortStats("sink"); st.TxFrames != 22*maxBatch {
		t.Fatalf("sink took %d frames, want %d", st.TxFrames, 22*maxBatch)
	}
	if allocs > 0 {
		t.Fatalf("forwarding a batch to a stream port allocated %.1f times", allocs)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within 5s")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestSocketFilesArePrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "net")
	sw := newTestSwitch(t, Config{Name: "t", Dir: dir})
	p1, err := sw.AddDgramPort("vm1", filepath.Join(t.TempDir(), "vmm.sock"))
	if err != nil {
		t.Fatal(err)
	}
	p2, err := sw.AddStreamPort("vm2")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, p1, p2} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		want := os.FileMode(0o600)
		if fi.IsDir() {
			want = 0o700
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s has mode %v, want %v", p, fi.Mode().Perm(), want)
		}
	}
	if err := sw.RemovePort("vm1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p1); !os.IsNotExist(err) {
		t.Errorf("socket file %s left after RemovePort: %v", p1, err)
	}
}

func TestInjectAfterRemoveIsNoOp(t *testing.T) {
	sw := newTestSwitch(t, Config{Name: "t"})
	a, b := addFake(t, sw, "a"), addFake(t, sw, "b")
	if err := sw.RemovePort("a"); err != nil {
		t.Fatal(err)
	}
	a.Inject(frame(broadcast, mac(1), 40))
	wantFrames(t, b)
}
