package app

import (
	"strings"
	"testing"
	"time"

	"github.com/stackvm/stack"
)

func TestRoundElapsed(t *testing.T) {
	for in, want := range map[time.Duration]string{
		4213 * time.Millisecond:                     "4.21s",
		350*time.Millisecond + 400*time.Microsecond: "350ms",
		3*time.Millisecond + 270*time.Microsecond:   "3.3ms",
		80 * time.Microsecond:                       "100µs",
	} {
		if got := roundElapsed(in).String(); got != want {
			t.Errorf("roundElapsed(%v) = %s, want %s", in, got, want)
		}
	}
}

// On a terminal a VM's warning is a note above the live block, naming the
// VM, and stays there when the VM's next event redraws the block.
func TestProgressTTYWarning(t *testing.T) {
	var out strings.Builder
	p, err := newProgress(Streams{Err: &out}, "tty")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	p.event(stack.Event{Time: now, Address: "vm.db", Phase: stack.PhaseBooting, Message: "booting"})
	p.event(stack.Event{Time: now, Address: "vm.db", Phase: stack.PhaseReady, Message: "ready: cloud-init finished with failed modules: locale"})
	p.event(stack.Event{Time: now, Address: "vm.db", Phase: stack.PhaseWarning, Message: "cloud-init module locale failed: no locale-gen"})
	got := out.String()
	note := strings.Index(got, "vm.db: cloud-init module locale failed: no locale-gen\n")
	if note < 0 || strings.LastIndex(got, "ready: cloud-init finished") < note {
		t.Fatalf("no note above a redrawn block:\n%q", got)
	}
	if p.latest["vm.db"].Phase != stack.PhaseReady {
		t.Fatalf("the warning replaced the VM's line: %+v", p.latest["vm.db"])
	}
}
