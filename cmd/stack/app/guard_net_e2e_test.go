package app

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/supervisor/client"
)

// twoVMsEgress is twoVMs with egress on, to the host's address allowed
// (so that a flood has somewhere to go that is not the internet).
const twoVMsEgress = `network "lan" {
  subnet = "10.58.0.0/24"
  egress {
    allow = ["%s"]
  }
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

// supervisorFDs counts the open descriptors of the namespace's supervisor.
func supervisorFDs(t *testing.T, c *cli) (int, int) {
	t.Helper()
	sv, err := client.Dial(context.Background(), filenames.RuntimeRoot(), c.stateDir, c.ns)
	if err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", sv.PID()))
	if err != nil {
		t.Fatal(err)
	}
	return sv.PID(), len(ents)
}

// TestHostileGuestOnTheNetwork: a guest that opens thousands of egress
// flows costs the supervisor a bounded number of descriptors, and one that
// sends as the gateway (its MAC) reaches nobody; meanwhile its neighbour
// stays ready, reachable by name, and stoppable.
func TestHostileGuestOnTheNetwork(t *testing.T) {
	requireVMs(t)
	ip := hostAddr(t)
	bin := filepath.Join(t.TempDir(), "hostile")
	build := exec.Command("go", "build", "-o", bin, "./testdata/hostile")
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the hostile program: %v\n%s", err, out)
	}
	file := filepath.Join(t.TempDir(), "stack.hcl")
	writeFile(t, file, fmt.Sprintf(twoVMsEgress, ip))
	c := newCLI(t, fmt.Sprintf("hnet-%d", os.Getpid()))
	c.mustRun("-f", file, "up", "--progress", "plain")
	neighbourOK := func(when string) {
		t.Helper()
		if r := c.run("exec", "good", "--", "ping", "-c", "1", "-W", "5", "mal"); r.code != 0 {
			t.Errorf("%s: the neighbour cannot reach mal by name: %+v", when, r)
		}
		if st := c.ps()["good"]; st.State != "ready" {
			t.Errorf("%s: the neighbour is %+v", when, st)
		}
	}

	// Streamed in with exec -i, as a guest would fetch any program.
	f, err := os.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	r := c.runIn(f, "exec", "-i", "mal", "--", "sh", "-c", "cat > /tmp/hostile && chmod +x /tmp/hostile")
	f.Close()
	if r.code != 0 {
		t.Fatalf("stream the program in: %+v", r)
	}

	pid, before := supervisorFDs(t, c)
	r = c.run("exec", "mal", "--", "/tmp/hostile", "udpflood", ip.String(), "3000")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "sent ") {
		t.Fatalf("the flood: %+v", r)
	}
	_, during := supervisorFDs(t, c)
	t.Logf("supervisor (pid %d) descriptors: %d before the flood of 3000 flows, %d after", pid, before, during)
	// FlowsPerVM is 1024 (docs/security.md); a flow holds one socket.
	if during-before > 1024+64 {
		t.Errorf("3000 flows cost the supervisor %d descriptors: not bounded", during-before)
	}
	neighbourOK("after the flood")

	// Sending as the gateway: mal takes the gateway's MAC (as its ARP
	// table has it) and pings the gateway: nothing comes back.
	gw := strings.TrimSpace(c.mustRun("exec", "mal", "--", "sh", "-c",
		"g=$(ip route | awk '/default/ {print $3}'); ping -c 1 -W 3 $g >/dev/null; echo $g $(ip neigh show $g | awk '{print $5}')").stdout)
	fields := strings.Fields(gw)
	if len(fields) != 2 {
		t.Fatalf("the gateway as mal sees it: %q", gw)
	}
	r = c.run("exec", "mal", "--", "sh", "-c", fmt.Sprintf(
		"m=$(cat /sys/class/net/eth0/address); ip link set dev eth0 address %s && ping -c 3 -W 2 %s; s=$?; ip link set dev eth0 address $m; exit $s",
		fields[1], fields[0]))
	if r.code == 0 {
		t.Errorf("mal, sending as the gateway, got answers: %+v", r)
	}
	neighbourOK("after the spoofing")
	if r := c.run("exec", "good", "--", "nslookup", "mal"); r.code != 0 {
		t.Errorf("the neighbour's DNS through the gateway: %+v", r)
	}
	// And the neighbour can still be stopped and started.
	c.mustRun("stop", "good")
	c.mustRun("start", "good", "--progress", "plain")
	neighbourOK("after stop and start")
}
