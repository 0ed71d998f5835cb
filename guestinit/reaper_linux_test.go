//go:build linux

package guestinit

import (
	"os/exec"
	"testing"
	"time"
)

func TestReaperDeliversStatus(t *testing.T) {
	r := StartReaper()
	t.Cleanup(r.Stop)
	cases := []struct {
		argv []string
		want int
	}{
		{[]string{"sh", "-c", "exit 7"}, 7},
		{[]string{"sh", "-c", "kill -TERM $$"}, 143},
	}
	for _, c := range cases {
		pid, ch, err := r.Start(exec.Command(c.argv[0], c.argv[1:]...))
		if err != nil {
			t.Fatal(err)
		}
		select {
		case ws := <-ch:
			if got := ExitCode(ws.Exited(), ws.ExitStatus(), ws.Signaled(), int(ws.Signal())); got != c.want {
				t.Errorf("%v (pid %d): exit code %d, want %d", c.argv, pid, got, c.want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%v: no status from the reaper", c.argv)
		}
	}
}
