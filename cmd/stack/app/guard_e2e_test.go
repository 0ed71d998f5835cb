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
