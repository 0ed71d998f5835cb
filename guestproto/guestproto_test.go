package guestproto

import (
	"encoding/json"
	"reflect"
	"testing"
)

// The exec messages' wire form: a TTY's size is flat beside its term, and
// unset input fields are left out, so each input message carries one thing.
func TestExecWireForm(t *testing.T) {
	for _, c := range []struct {
		v    any
		want string
	}{
		{ExecRequest{Argv: []string{"sh"}, Stdin: true, TTY: &TTY{Term: "xterm", WindowSize: WindowSize{Rows: 24, Cols: 80}}},
			`{"argv":["sh"],"stdin":true,"tty":{"term":"xterm","rows":24,"cols":80}}`},
		{ExecRequest{Argv: []string{"true"}}, `{"argv":["true"]}`},
		{ExecInput{Data: []byte("hi")}, `{"data":"aGk="}`},
		{ExecInput{EOF: true}, `{"eof":true}`},
		{ExecInput{Size: &WindowSize{Rows: 1, Cols: 2}}, `{"size":{"rows":1,"cols":2}}`},
		{ExecInput{Hangup: true}, `{"hangup":true}`},
		{ExecInputAck{N: 5}, `{"n":5}`},
	} {
		b, err := json.Marshal(c.v)
		if err != nil || string(b) != c.want {
			t.Errorf("%+v: %s (%v), want %s", c.v, b, err, c.want)
			continue
		}
		back := reflect.New(reflect.TypeOf(c.v))
		if err := json.Unmarshal(b, back.Interface()); err != nil || !reflect.DeepEqual(back.Elem().Interface(), c.v) {
			t.Errorf("%s read back as %+v (%v)", b, back.Elem().Interface(), err)
		}
	}
}
