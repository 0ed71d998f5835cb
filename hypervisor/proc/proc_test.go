package proc

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

func TestParseStartTime(t *testing.T) {
	cases := []struct {
		name string
		in   string
		want uint64
		err  bool
	}{
		{"plain", "1234 (qemu-system-x86) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 3 0 987654 1000 50", 987654, false},
		{"comm with spaces and parens", "42 (a ) b (c) R 1 42 42 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0", 55, false},
		{"truncated", "42 (x) R 1 2 3", 0, true},
		{"no comm", "42 x R", 0, true},
		{"not a number", "42 (x) R 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 abc 0", 0, true},
		{"empty", "", 0, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseStartTime([]byte(c.in))
			if (err != nil) != c.err {
				t.Fatalf("err = %v, want error %v", err, c.err)
			}
			if got != c.want {
				t.Fatalf("got %d, want %d", got, c.want)
			}
		})
	}
}

func FuzzParseStartTime(f *testing.F) {
	f.Add([]byte("1 (init) S 0 1 1 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 9 10 11"))
	f.Add([]byte("))))"))
	f.Add([]byte("1 (x"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = ParseStartTime(b)
	})
}

func TestSelfAndChild(t *testing.T) {
	st, err := StartTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if !Alive(os.Getpid(), st) {
		t.Fatal("own process not alive")
	}
	if Alive(os.Getpid(), st+1) {
		t.Fatal("wrong start time counted as alive (pid reuse not detected)")
	}

	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	cst, err := StartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	if !Alive(pid, cst) {
		t.Fatal("child not alive")
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	// Before reaping, the child is a zombie: gone for our purposes.
	for i := 0; ; i++ {
		if s, err := State(pid); err == nil && s == 'Z' {
			break
		}
		if i > 1000 {
			t.Fatal("child never became a zombie")
		}
		time.Sleep(time.Millisecond)
	}
	if Alive(pid, cst) {
		t.Fatal("zombie counted as alive")
	}
	_ = cmd.Wait()
	if Alive(pid, cst) {
		t.Fatal("reaped child counted as alive")
	}
	if _, err := StartTime(pid); err == nil {
		// The pid may have been reused in between, which is fine only if the
		// start time differs.
		if st2, _ := StartTime(pid); st2 == cst {
			t.Fatal("start time of a reaped pid unchanged")
		}
	}
	if _, err := StartTime(-1); err == nil {
		t.Fatal("negative pid accepted")
	}
}
