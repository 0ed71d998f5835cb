package app

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stackvm/stack/internal/pty"
	"github.com/stackvm/stack/internal/testutil"
)

// Tests of a hostile guest (issue 23): the guest misbehaves through busybox
// in the built-in image, as root, and the host stays in control. Each test
// boots two VMs: mal, the hostile one, and good, its neighbour, which must
// stay ready, reachable and stoppable throughout.

const twoVMs = `network "lan" {
  subnet = "10.57.0.0/24"
}

vm "mal" {
  command = ["sh", "-c", "echo mal-up; exec sleep 100000"]
  network "lan" {}
}

vm "good" {
  command = ["sh", "-c", "echo good-up; exec sleep 100000"]
  network "lan" {}
}
`

// upTwoVMs boots twoVMs in a namespace of its own.
func upTwoVMs(t *testing.T, name string) *cli {
	t.Helper()
	requireVMs(t)
	file := filepath.Join(t.TempDir(), "stack.hcl")
	writeFile(t, file, twoVMs)
	c := newCLI(t, fmt.Sprintf("%s-%d", name, os.Getpid()))
	c.mustRun("-f", file, "up", "--progress", "plain")
	return c
}

// unbindAgentPort is a guest script that, once the exec that starts it has
// reported its exit, detaches the guest's virtio-serial driver: the agent
// port is gone from the guest, and QEMU stops taking the host's bytes for
// it. This is a guest that stops reading its agent port.
const unbindAgentPort = `d=$(basename $(readlink -f /sys/class/virtio-ports/*/device)); ` +
	`(sleep 1; echo $d > /sys/bus/virtio/drivers/virtio_console/unbind) >/dev/null 2>&1 &`

// checkNeighbour: good is still ready and answers an exec.
func (c *cli) checkNeighbour() {
	c.t.Helper()
	if st := c.ps()["good"]; st.State != "ready" {
		c.t.Errorf("the neighbour is not ready: %+v", st)
	}
	if r := c.run("exec", "good", "--", "echo", "still-here"); r.code != 0 || r.stdout != "still-here\n" {
		c.t.Errorf("exec in the neighbour: %+v", r)
	}
}

// TestStopAGuestThatStopsReading: a guest that stops reading its agent port
// while the host streams an exec's input to it blocks the host's write to
// the port; `stack stop` still ends the VM within its timeout (then QMP
// quit's, then SIGKILL), where it used to hang for good.
func TestStopAGuestThatStopsReading(t *testing.T) {
	c := upTwoVMs(t, "deafagent")
	c.mustRun("exec", "mal", "--", "sh", "-c", unbindAgentPort)
	time.Sleep(2 * time.Second)

	// An exec whose input never ends: the host writes it to the port until
	// the socket into QEMU is full.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	inR, inW := io.Pipe()
	go func() {
		chunk := make([]byte, 64<<10)
		for {
			if _, err := inW.Write(chunk); err != nil {
				return
			}
		}
	}()
	defer inW.Close()
	execDone := make(chan int, 1)
	go func() {
		var out, errb strings.Builder
		execDone <- Main(ctx, Streams{In: inR, Out: &out, Err: &errb},
			[]string{"-p", c.ns, "--state-dir", c.stateDir, "exec", "-i", "mal", "--", "cat"})
	}()
	time.Sleep(3 * time.Second)

	const timeout = 5 * time.Second
	start := time.Now()
	stopped := make(chan result, 1)
	go func() { stopped <- c.run("stop", "--timeout", timeout.String(), "mal") }()
	// The bound: the graceful timeout, QMP quit's 5s, and slack for a
	// loaded host.
	select {
	case r := <-stopped:
		if r.code != 0 {
			t.Fatalf("stop: %+v", r)
		}
		t.Logf("stop --timeout %s of a guest that stopped reading its agent port took %s", timeout, time.Since(start).Round(time.Millisecond))
	case <-time.After(timeout + 5*time.Second + 30*time.Second):
		t.Fatalf("stop --timeout %s still running after %s", timeout, time.Since(start).Round(time.Second))
	}
	if st := c.ps()["mal"]; st.State != "stopped" {
		t.Errorf("mal after stop: %+v", st)
	}
	c.checkNeighbour()
	cancel()
	select {
	case <-execDone:
	case <-time.After(30 * time.Second):
		t.Error("the exec into the stopped VM did not end with its client")
	}
}

// floodAgent is a guest script that takes the agent port from the guest
// init (it detaches and re-attaches the virtio-serial driver, and opens
// the new port) and floods the host with reports: exits and errors, with
// control characters and long strings. It runs detached from the exec
// that starts it and says "flood-done" on the console at the end.
const floodAgent = `n=$1
d=$(basename $(readlink -f /sys/class/virtio-ports/*/device))
drv=/sys/bus/virtio/drivers/virtio_console
echo $d > $drv/unbind
echo $d > $drv/bind
sleep 1
p=$(for f in /sys/class/virtio-ports/*; do [ "$(cat $f/name)" = org.stackvm.agent ] && basename $f; done)
long=$(head -c 4000 /dev/zero | tr '\0' x)
echo flood-start
i=0
while [ $i -lt $n ]; do
  echo '{"type":"exit","status":{"exited":true,"exit_code":7}}'
  echo '{"type":"error","error":"\u001b]0;pwned\u0007'$long'"}'
  echo '{"type":"hello","status":{"ready":true,"exited":false,"exit_code":0,"error":"\u001b[2J'$long'"}}'
  i=$((i+1))
done > /dev/$p
echo flood-done
`

// TestGuestReportFlood: a guest that takes its agent port and floods the
// host with exit and error reports makes one exit event and log line (it
// used to make one per report: 200k reports wrote 21 MB of log), its
// strings are stored cut, and its neighbour still stops, starts and is
// seen ready meanwhile.
func TestGuestReportFlood(t *testing.T) {
	c := upTwoVMs(t, "flood")
	logPath := filepath.Join(c.stateDir, c.ns, "supervisor.log")
	before := fileSize(t, logPath)
	const n = 10000
	script := strings.NewReader(floodAgent)
	r := c.runIn(script, "exec", "-i", "mal", "--", "sh", "-c",
		fmt.Sprintf(`cat > /tmp/flood.sh; (sleep 1; sh /tmp/flood.sh %d) >/dev/console 2>&1 &`, n))
	if r.code != 0 {
		t.Fatalf("start the flood: %+v", r)
	}
	c.waitConsole("mal", "flood-start", 60*time.Second)
	start := time.Now()
	c.mustRun("stop", "good")
	c.mustRun("start", "good") // waits for good's readiness
	t.Logf("the neighbour stopped and started again, ready, in %s during the flood", time.Since(start).Round(time.Millisecond))
	c.waitConsole("mal", "flood-done", 5*time.Minute)
	t.Logf("%d reports of each kind sent in %s", n, time.Since(start).Round(time.Millisecond))
	c.checkNeighbour()

	grew := fileSize(t, logPath) - before
	log, _ := os.ReadFile(logPath)
	exits := strings.Count(string(log), `address=vm.mal phase=exited`)
	t.Logf("supervisor.log grew by %d bytes; %d exited lines for mal", grew, exits)
	if exits != 1 {
		t.Errorf("%d exit reports made %d log lines, want 1", n, exits)
	}
	if grew > 64<<10 {
		t.Errorf("supervisor.log grew by %d bytes during the flood", grew)
	}
	if reason := c.ps()["mal"].Reason; len(reason) > 1200 || strings.Contains(reason, "\x1b[2J"+strings.Repeat("x", 2000)) {
		t.Errorf("mal's reason holds %d bytes of the guest's string", len(reason))
	}
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// runIn is run with stdin from in.
func (c *cli) runIn(in io.Reader, args ...string) result {
	c.t.Helper()
	var out, errb strings.Builder
	full := append([]string{"-p", c.ns, "--state-dir", c.stateDir}, args...)
	code := Main(context.Background(), Streams{In: in, Out: &out, Err: &errb}, full)
	return result{code, out.String(), errb.String()}
}

// escapes is what a hostile guest prints to retitle the window (OSC 0),
// write the clipboard (OSC 52) and clear the screen (CSI 2J), and how
// stack shows it.
const (
	escapes        = "\x1b]0;pwned\x07\x1b]52;c;cm0gLXJmIH4K\x07\x1b[2J"
	escapesVisible = `\x1b]0;pwned\x07\x1b]52;c;cm0gLXJmIH4K\x07\x1b[2J`
)

const escapeVMs = `network "lan" {
  subnet = "10.58.0.0/24"
}

vm "loud" {
  command = ["sh", "-c", "printf 'before\\033]0;pwned\\007\\033]52;c;cm0gLXJmIH4K\\007\\033[2Jafter-%d\\n' 2; exec sleep 100000"]
  network "lan" {}
}

# Its workload cannot start: the guest init's error, which quotes the
# command, comes back to up's progress and failure report.
vm "bad" {
  command = ["/nonexistent-\u001b]0;pwned\u0007\u001b]52;c;cm0gLXJmIH4K\u0007\u001b[2J"]
  network "lan" {}
}
`

// TestGuestEscapesShowAsEscapes: control characters from a guest (its
// console, its error strings, exec output to a terminal) reach the user's
// terminal as visible escapes, where they used to pass raw; the console
// log keeps them, and exec output to a pipe is byte for byte.
func TestGuestEscapesShowAsEscapes(t *testing.T) {
	requireVMs(t)
	file := filepath.Join(t.TempDir(), "stack.hcl")
	writeFile(t, file, escapeVMs)
	c := newCLI(t, fmt.Sprintf("esc-%d", os.Getpid()))
	noRaw := func(what, out string) {
		t.Helper()
		if strings.ContainsAny(out, "\x1b\x07") {
			t.Errorf("%s passes control characters raw: %q", what, out)
		}
	}

	r := c.run("-f", file, "up", "--progress", "plain")
	if r.code != 1 {
		t.Fatalf("up with a VM that cannot start its workload: %+v", r)
	}
	noRaw("up's progress and failure report", r.stderr)
	if n := strings.Count(r.stderr, escapesVisible); n < 3 { // progress, report, the error
		t.Errorf("up's output shows the guest's error escaped %d times, want 3:\n%s", n, r.stderr)
	}

	c.waitConsole("loud", "after-2", 60*time.Second) // not in the command line, which the log shows too
	r = c.mustRun("logs", "loud")
	noRaw("logs", r.stdout)
	if !strings.Contains(r.stdout, "before"+escapesVisible+"after-2") {
		t.Errorf("logs does not show the escapes as escapes:\n%s", r.stdout)
	}
	raw, err := os.ReadFile(filepath.Join(c.stateDir, c.ns, "vms", "loud", "console.log"))
	if err != nil || !strings.Contains(string(raw), "before"+escapes+"after-2") {
		t.Errorf("the console log does not keep the guest's bytes: %v", err)
	}

	// exec: escaped on a terminal, byte for byte into a pipe.
	m, s, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var term testutil.SyncBuffer
	go io.Copy(&term, m)
	printf := []string{"exec", "loud", "--", "printf", `x\033]0;pwned\007\033]52;c;cm0gLXJmIH4K\007\033[2Jy\n`}
	done := c.start(Streams{In: strings.NewReader(""), Out: s, Err: s}, printf...)
	if code := c.wait(done, 60*time.Second); code != 0 {
		t.Fatalf("exec to a terminal: exit %d", code)
	}
	s.Close()
	c.waitFor(&term, "y", 10*time.Second)
	noRaw("exec to a terminal", term.String())
	if !strings.Contains(term.String(), "x"+escapesVisible+"y") {
		t.Errorf("exec to a terminal: %q", term.String())
	}
	if r := c.mustRun(printf...); r.stdout != "x"+escapes+"y\n" {
		t.Errorf("exec into a pipe changed the bytes: %q", r.stdout)
	}
}

// TestSharedDirsBoundOnTheHost: the guest's root cannot get around a
// read-only share by remounting it read-write (the host serves it from a
// read-only mount), nor make device nodes in a writable share's host
// directory (its virtiofsd lacks CAP_MKNOD); it used to do both.
func TestSharedDirsBoundOnTheHost(t *testing.T) {
	requireVMs(t)
	ro, rw := t.TempDir(), t.TempDir()
	writeFile(t, filepath.Join(ro, "file"), "from the host\n")
	file := filepath.Join(t.TempDir(), "stack.hcl")
	writeFile(t, file, `network "lan" {
  subnet = "10.59.0.0/24"
}

vm "sharer" {
  command = ["sleep", "100000"]
  network "lan" {}
  shared_dir "ro" {
    host_path  = "`+ro+`"
    guest_path = "/ro"
    read_only  = true
  }
  shared_dir "rw" {
    host_path  = "`+rw+`"
    guest_path = "/rw"
  }
}
`)
	c := newCLI(t, fmt.Sprintf("shares-%d", os.Getpid()))
	c.mustRun("-f", file, "up", "--progress", "plain")
	r := c.run("exec", "sharer", "--", "sh", "-c", `
mount -o remount,rw /ro && echo remounted
echo from-the-guest > /ro/file && echo wrote-ro
mknod /rw/disk b 8 0 && echo made-block-device
mknod /rw/null c 1 3 && echo made-char-device
mkfifo /rw/fifo && echo made-fifo
echo data > /rw/new && echo wrote-rw`)
	t.Logf("guest: %s%s", r.stdout, r.stderr)
	for _, want := range []string{"remounted", "made-fifo", "wrote-rw"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("the guest could not do what it may (%s): %+v", want, r)
		}
	}
	for _, not := range []string{"wrote-ro", "made-block-device", "made-char-device"} {
		if strings.Contains(r.stdout, not) {
			t.Errorf("the guest's root did it: %s", not)
		}
	}
	if b, err := os.ReadFile(filepath.Join(ro, "file")); err != nil || string(b) != "from the host\n" {
		t.Errorf("the read-only share's file on the host: %q, %v", b, err)
	}
	for _, name := range []string{"disk", "null"} {
		if _, err := os.Lstat(filepath.Join(rw, name)); !os.IsNotExist(err) {
			t.Errorf("a device node %s is in the host directory: %v", name, err)
		}
	}
}
