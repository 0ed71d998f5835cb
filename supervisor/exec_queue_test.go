package supervisor

import (
	"bytes"
	"fmt"
	"runtime"
	"testing"

	"github.com/stackvm/stack/guestproto"
)

// A slow client loses nothing up to maxExecBacklog; beyond it, output is
// counted as cut (and the session says so), while acknowledgements and the
// exit still get through.
func TestExecQueueBacklog(t *testing.T) {
	q := newExecQueue()
	chunk := guestproto.Message{Type: guestproto.TypeExecOutput, Body: bytes.Repeat([]byte("x"), 1<<20)}
	for range maxExecBacklog>>20 + 3 {
		q.push(chunk)
	}
	q.push(guestproto.Message{Type: guestproto.TypeExecInputAck, Body: []byte(`{"n":1}`)})
	q.push(guestproto.Message{Type: guestproto.TypeExecExit, Body: []byte(`{"code":0}`)})
	select {
	case <-q.ready:
	default:
		t.Fatal("no ready token after pushes")
	}
	b := q.take()
	// Each chunk costs its body and execMsgCost: one chunk fewer fits.
	kept := maxExecBacklog>>20 - 1
	if len(b.msgs) != kept+1 {
		t.Fatalf("kept %d messages, want %d output chunks + exit", len(b.msgs), kept)
	}
	if want := 4 << 20; b.cut != want {
		t.Errorf("cut = %d bytes, want %d", b.cut, want)
	}
	if b.acked != 1 || b.msgs[len(b.msgs)-1].Type != guestproto.TypeExecExit {
		t.Errorf("ack (%d bytes) and exit (%s) not kept", b.acked, b.msgs[len(b.msgs)-1].Type)
	}
	if b := q.take(); len(b.msgs) != 0 || b.cut != 0 || b.acked != 0 {
		t.Errorf("second take = %+v; want nothing", b)
	}
	// After the exit nothing more is queued.
	q.push(chunk)
	if b := q.take(); len(b.msgs) != 0 {
		t.Errorf("output after the exit was queued: %d messages", len(b.msgs))
	}

	q = newExecQueue()
	q.push(chunk)
	q.take()
	q.push(chunk)
	if b := q.take(); len(b.msgs) != 1 {
		t.Errorf("after a take the backlog starts again: got %d messages", len(b.msgs))
	}
}

// Every message a guest sends to a session counts toward the cap, and
// counts at least what it costs in memory: a flood of one-byte outputs,
// of acknowledgements, or of messages padded with fields the queue does
// not use stays within the cap. (Counting output bytes alone, such a
// flood kept 263 MiB in a 64 MiB queue.)
func TestExecQueueCountsEveryMessage(t *testing.T) {
	tiny := []byte(`{"stream":"stdout","data":"eA=="}`)
	floods := map[string]func(i int) guestproto.Message{
		"one-byte outputs": func(int) guestproto.Message {
			// As the agent reader hands them over: a fresh body each.
			return guestproto.Message{Type: guestproto.TypeExecOutput, ID: "0123456789abcdef", Body: append([]byte(nil), tiny...)}
		},
		"padded outputs": func(int) guestproto.Message {
			return guestproto.Message{Type: guestproto.TypeExecOutput, ID: "0123456789abcdef", Body: append([]byte(nil), tiny...),
				Text: string(bytes.Repeat([]byte("p"), 4096)), Status: &guestproto.Status{Error: "e"}}
		},
		"acknowledgements": func(i int) guestproto.Message {
			return guestproto.Message{Type: guestproto.TypeExecInputAck, Body: fmt.Appendf(nil, `{"n":%d}`, i%7+1)}
		},
	}
	const max = 16 << 20
	for name, msg := range floods {
		t.Run(name, func(t *testing.T) {
			q := newExecQueue()
			q.max = max
			before := heapInUse()
			n := 0
			for ; n < 400_000; n++ {
				q.push(msg(n))
			}
			held := heapInUse() - before
			q.mu.Lock()
			counted, queued := q.bytes, len(q.msgs)
			q.mu.Unlock()
			t.Logf("%d messages pushed: %d queued, %d bytes counted, %d bytes of heap held", n, queued, counted, held)
			if counted > max {
				t.Errorf("the queue counts %d bytes, over its cap of %d", counted, max)
			}
			if held > max+max/4 {
				t.Errorf("the queue holds %d bytes of heap, over its cap of %d", held, max)
			}
			runtime.KeepAlive(q)
		})
	}
}

func heapInUse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse)
}
