package supervisor

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stackvm/stack/guestproto"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/supervisor/api"
)

// A guest that floods the host with exit reports and long error strings
// makes one exited event, stores and reports its strings cut, and does not
// keep its neighbour's events from a watcher.
func TestGuestFloodIsBounded(t *testing.T) {
	s, drv, c := newTestSupervisor(t)
	ctx := context.Background()
	events, err := c.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mal := startSpec(t, s, "no")
	if _, err := c.StartVM(ctx, mal); err != nil {
		t.Fatal(err)
	}
	flooder := drv.last()
	flooder.say(t, guestproto.Message{Type: guestproto.TypeReady, Status: &guestproto.Status{Ready: true}})
	waitPhase(t, events, api.PhaseReady)

	long := strings.Repeat("\x1b]52;c;AAAA\x07", 1000) // 12 KB
	const n = 1000
	for i := range n {
		flooder.say(t, guestproto.Message{Type: guestproto.TypeExit, Status: &guestproto.Status{Exited: true, ExitCode: i, Error: long}})
		flooder.say(t, guestproto.Message{Type: guestproto.TypeError, Error: long})
	}
	// The neighbour boots after the flood and fails with a long error.
	good := startSpec(t, s, "no")
	good.Address, good.Name, good.StateDir = "vm.b", "b", filenames.VMState(s.opts.StateRoot, "t", "b")
	if _, err := c.StartVM(ctx, good); err != nil {
		t.Fatal(err)
	}
	drv.last().say(t, guestproto.Message{Type: guestproto.TypeError, Error: long})

	exits := 0
	var failed api.Event
	timeout := time.After(10 * time.Second)
	for failed.Address == "" {
		select {
		case ev := <-events:
			switch {
			case ev.Address == mal.Address && ev.Phase == api.PhaseExited:
				exits++
			case ev.Address == good.Address && ev.Phase == api.PhaseFailed:
				failed = ev
			}
		case <-timeout:
			t.Fatalf("the neighbour's failure never came (%d exited events of the flooder)", exits)
		}
	}
	if exits != 1 {
		t.Errorf("%d exit reports made %d exited events, want 1", n, exits)
	}
	if len(failed.Message) > maxGuestString+100 || !strings.Contains(failed.Message, "more bytes cut") {
		t.Errorf("the neighbour's failure event carries %d bytes of the guest's error", len(failed.Message))
	}
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range st {
		if len(v.Reason) > maxGuestString+100 {
			t.Errorf("%s's reason holds %d bytes of the guest's string", v.Address, len(v.Reason))
		}
	}
}

// The limiter lets a burst through, then the rate; it notes the first
// drop at once and the next ones dropLogEvery later, counted.
func TestGuestLimiter(t *testing.T) {
	var l guestLimiter
	now := time.Unix(1000, 0)
	burst := func(n int) (passed, noted int) {
		for range n {
			ok, note := l.allow(now)
			if ok {
				passed++
			}
			noted += note
		}
		return passed, noted
	}
	if passed, noted := burst(10 * guestMsgBurst); passed != guestMsgBurst || noted != 1 {
		t.Fatalf("a burst at one instant: %d passed, %d noted as dropped; want %d and 1", passed, noted, guestMsgBurst)
	}
	now = now.Add(time.Second)
	if passed, noted := burst(10 * guestMsgRate); passed != guestMsgRate || noted != 0 {
		t.Fatalf("a second later: %d passed, %d noted; want %d and 0", passed, noted, guestMsgRate)
	}
	now = now.Add(dropLogEvery)
	want := 10*guestMsgBurst - guestMsgBurst - 1 + 10*guestMsgRate - guestMsgRate + 1
	if passed, noted := burst(guestMsgBurst + 1); passed != guestMsgBurst || noted != want {
		t.Fatalf("%s later: %d passed, %d noted; want %d and %d", dropLogEvery, passed, noted, guestMsgBurst, want)
	}
}

func TestGuestString(t *testing.T) {
	if got := guestString("short"); got != "short" {
		t.Errorf("guestString(short) = %q", got)
	}
	s := strings.Repeat("é", maxGuestString) // 2 bytes each
	got := guestString(s)
	if !strings.HasPrefix(got, strings.Repeat("é", maxGuestString/2)+"…") || !strings.HasSuffix(got, "(1024 more bytes cut)") {
		t.Errorf("guestString cut %d bytes of é into %q", len(s), got[len(got)-40:])
	}
}
