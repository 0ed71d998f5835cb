package supervisor

import (
	"bytes"
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
	msgs, cut := q.take()
	if want := maxExecBacklog >> 20; len(msgs) != want+2 {
		t.Fatalf("kept %d messages, want %d output chunks + ack + exit", len(msgs), want)
	}
	if cut != 3<<20 {
		t.Errorf("cut = %d bytes, want %d", cut, 3<<20)
	}
	if msgs[len(msgs)-1].Type != guestproto.TypeExecExit || msgs[len(msgs)-2].Type != guestproto.TypeExecInputAck {
		t.Errorf("ack and exit not kept in order: %s, %s", msgs[len(msgs)-2].Type, msgs[len(msgs)-1].Type)
	}
	if msgs, cut := q.take(); len(msgs) != 0 || cut != 0 {
		t.Errorf("second take = %d messages, %d cut; want nothing", len(msgs), cut)
	}
	q.push(chunk)
	if msgs, _ := q.take(); len(msgs) != 1 {
		t.Errorf("after a take the backlog starts again: got %d messages", len(msgs))
	}
}
