package netswitch

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestQueuePerSource: a port that sends more than a queued internal port
// takes loses its own excess, and another port's frames go in between its
// queued ones instead of after them.
func TestQueuePerSource(t *testing.T) {
	sw := newTestSwitch(t, Config{Name: "t"})
	got := make(chan []byte, 100)
	gate := make(chan struct{}, 100)
	gwMAC := mac(100)
	var inRecv atomic.Int32
	_, err := sw.AddInternal("gw", func(f []byte) {
		inRecv.Add(1)
		defer inRecv.Add(-1)
		got <- append([]byte(nil), f...)
		<-gate // the test lets each frame through
	}, PinMACs(gwMAC), QueuePerSource(4))
	if err != nil {
		t.Fatal(err)
	}
	a, b := addFake(t, sw, "a"), addFake(t, sw, "b")
	released := false
	t.Cleanup(func() { // before the switch closes: a blocked recv would hold it
		if !released {
			close(gate)
		}
	})

	// a sends 10 frames while the gateway is busy with the first: its
	// queue of 4 holds f1 to f4, the rest is dropped. b's 2 frames go to
	// b's own queue.
	fa := make([][]byte, 10)
	for i := range fa {
		fa[i] = frame(gwMAC, mac(1), 40+i)
		a.Inject(fa[i])
	}
	fb := [][]byte{frame(gwMAC, mac(2), 60), frame(gwMAC, mac(2), 61)}
	for _, f := range fb {
		b.Inject(f)
	}
	sa, _ := sw.PortStats("a")
	sb, _ := sw.PortStats("b")
	sg, _ := sw.PortStats("gw")
	if sa.QueueDrops != 6 || sb.QueueDrops != 0 || sg.TxDrops != 6 || sg.TxFrames != 6 {
		t.Fatalf("a dropped %d, b %d; gateway took %d and dropped %d; want 6, 0, 6, 6", sa.QueueDrops, sb.QueueDrops, sg.TxFrames, sg.TxDrops)
	}

	// Round-robin: each source in order, and b's frames between a's, not
	// after them. (Depending on whether b's queue existed when the
	// gateway's first round began, b1 comes after a1 or a2.)
	var order []string
	for i := 0; i < 6; i++ {
		gate <- struct{}{}
		select {
		case f := <-got:
			for k, w := range append(fa[:4:4], fb...) {
				if string(f) == string(w) {
					order = append(order, [...]string{"a1", "a2", "a3", "a4", "b1", "b2"}[k])
				}
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("frame %d not delivered within 5s", i)
		}
	}
	if o := strings.Join(order, " "); o != "a1 b1 a2 b2 a3 a4" && o != "a1 a2 b1 a3 b2 a4" {
		t.Fatalf("delivered %s, not round-robin", o)
	}

	// RemovePort waits for a recv in progress: once it returns, no recv
	// runs. (The frame below may or may not be taken before the removal.)
	a.Inject(fa[0])
	close(gate) // recv no longer waits
	released = true
	if err := sw.RemovePort("gw"); err != nil {
		t.Fatal(err)
	}
	if n := inRecv.Load(); n != 0 {
		t.Fatalf("recv still running after RemovePort")
	}

	if _, err := sw.AddInternal("neg", func([]byte) {}, QueuePerSource(-1)); err == nil {
		t.Fatalf("a negative queue depth was accepted")
	}
}
