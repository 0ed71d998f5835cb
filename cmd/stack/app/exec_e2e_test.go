package app

import (
	"context"
	"io"
	"os"
	"reflect"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stackvm/stack/internal/pty"
	"github.com/stackvm/stack/internal/testutil"
)

// Assertions on `stack exec` against a running VM, shared by the boot
// tests (which keep VM boots few by adding them to the boots they make).

// waitFor polls until the buffer holds want.
func (c *cli) waitFor(b *testutil.SyncBuffer, want string, timeout time.Duration) {
	c.t.Helper()
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if strings.Contains(b.String(), want) {
			return
		}
	}
	c.t.Fatalf("no %q in the output after %s; output so far: %q", want, timeout, b.String())
}

// start runs the CLI in the background with the given streams; the
// channel gets its exit code.
func (c *cli) start(s Streams, args ...string) <-chan int {
	full := append([]string{"-p", c.ns, "--state-dir", c.stateDir}, args...)
	done := make(chan int, 1)
	go func() { done <- Main(context.Background(), s, full) }()
	return done
}

func (c *cli) wait(done <-chan int, timeout time.Duration) int {
	c.t.Helper()
	select {
	case code := <-done:
		return code
	case <-time.After(timeout):
		c.t.Fatalf("stack exec still running after %s", timeout)
		return -1
	}
}

// checkExecStdin: `exec -i` streams stdin (the command answers a line
// before stdin has ended) and stdin's end closes the command's input.
func (c *cli) checkExecStdin(vm string) {
	c.t.Helper()
	inR, inW := io.Pipe()
	var out, errb testutil.SyncBuffer
	start := time.Now()
	done := c.start(Streams{In: inR, Out: &out, Err: &errb},
		"exec", "-i", vm, "--", "sh", "-c", `read a; echo "got-$a"; cat; echo end >&2; exit 4`)
	inW.Write([]byte("one\n"))
	c.waitFor(&out, "got-one\n", 60*time.Second)
	answered := time.Since(start)
	inW.Write([]byte("two\nthree"))
	inW.Close()
	code := c.wait(done, 60*time.Second)
	if code != 4 || out.String() != "got-one\ntwo\nthree" || errb.String() != "end\n" {
		c.t.Fatalf("exec -i: exit %d, stdout %q, stderr %q", code, out.String(), errb.String())
	}
	c.t.Logf("exec -i in %s: first answer after %s, done after %s", vm, answered.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// checkExecTTY: `exec -it` from a terminal (a pty here) gives the command a
// terminal of our size and TERM, passes keys and size changes (SIGWINCH),
// returns the command's exit code, and leaves our terminal as it was.
// shell prefixes tty and stty (busybox in initramfs VMs).
func (c *cli) checkExecTTY(vm, tools string) {
	c.t.Helper()
	m, s, err := pty.Open()
	if err != nil {
		c.t.Fatal(err)
	}
	defer m.Close()
	defer s.Close()
	if err := pty.SetSize(s, 33, 101); err != nil {
		c.t.Fatal(err)
	}
	before, err := unix.IoctlGetTermios(int(s.Fd()), unix.TCGETS)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Setenv("TERM", "xterm-e2e")
	var out testutil.SyncBuffer
	go io.Copy(&out, m)
	script := tools + `tty; ` + tools + `stty size; echo "T=$TERM"; echo to-stderr >&2; read x; echo "x=$x"; ` +
		`while [ "$(` + tools + `stty size)" = "33 101" ]; do sleep 0.1; done; ` + tools + `stty size; exit 3`
	start := time.Now()
	done := c.start(Streams{In: s, Out: s, Err: s}, "exec", "-it", vm, "--", "sh", "-c", script)
	c.waitFor(&out, "to-stderr\r\n", 60*time.Second)
	m.Write([]byte("hi\r")) // Enter in raw mode; the guest's terminal maps it to \n
	c.waitFor(&out, "x=hi\r\n", 30*time.Second)
	if err := pty.SetSize(s, 50, 120); err != nil {
		c.t.Fatal(err)
	}
	syscall.Kill(os.Getpid(), syscall.SIGWINCH)
	code := c.wait(done, 60*time.Second)
	got := out.String()
	for _, want := range []string{"/dev/pts/", "\r\n33 101\r\n", "T=xterm-e2e\r\n", "to-stderr\r\n", "x=hi\r\n", "50 120\r\n"} {
		if !strings.Contains(got, want) {
			c.t.Errorf("exec -it output lacks %q", want)
		}
	}
	if code != 3 || c.t.Failed() {
		c.t.Fatalf("exec -it: exit %d, output %q", code, got)
	}
	after, err := unix.IoctlGetTermios(int(s.Fd()), unix.TCGETS)
	if err != nil {
		c.t.Fatal(err)
	}
	if !reflect.DeepEqual(before, after) {
		c.t.Fatalf("exec -it left the terminal changed:\n%+v\n%+v", before, after)
	}
	c.t.Logf("exec -it in %s: %s", vm, time.Since(start).Round(time.Millisecond))
}
