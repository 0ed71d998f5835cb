package app

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stackvm/stack/hypervisor/proc"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/stacktest"
	"github.com/stackvm/stack/supervisor/client"
)

// TestChaos is the hardening attack run as a bounded, repeatable suite
// (`make chaos`; `make test` runs it with a small count). Each round
// brings a namespace up, attacks it one way (chosen by a seeded random
// generator: STACK_CHAOS_SEED repeats a run), recovers it the documented
// way, and checks that it converged: every VM ready, one VMM each. At the
// end down must leave no VMM and no supervisor. It prints converged/total,
// orphans, the largest supervisor peak RSS and the time ps took to report
// a wedged (SIGSTOPped) supervisor.
func TestChaos(t *testing.T) {
	requireVMs(t)
	// Not in make test yet: the kill of a supervisor between a VMM's
	// start and its record leaves that VMM unrecorded, and the next up
	// starts a second one (see the hardening report). make chaos runs it.
	rounds, err := strconv.Atoi(os.Getenv("STACK_CHAOS_ROUNDS"))
	if err != nil || rounds <= 0 {
		t.Skip("set STACK_CHAOS_ROUNDS (make chaos)")
	}
	seed := time.Now().UnixNano()
	if n, err := strconv.ParseInt(os.Getenv("STACK_CHAOS_SEED"), 10, 64); err == nil {
		seed = n
	}
	rng := rand.New(rand.NewSource(seed))
	c := newCLI(t, fmt.Sprintf("chaos-%d", os.Getpid()))
	file := filepath.Join(t.TempDir(), "stack.hcl")
	writeFile(t, file, oneVM)
	ch := &chaos{t: t, c: c, file: file}

	attacks := []struct {
		name string
		run  func(rng *rand.Rand)
	}{
		{"kill -9 the supervisor during up", ch.killSupervisorDuringUp},
		{"SIGSTOP the supervisor", ch.wedgeSupervisor},
		{"corrupt state.json", ch.corruptState},
		{"delete state.json", ch.deleteState},
		{"concurrent up and down", ch.concurrentUpDown},
	}
	converged := 0
	for i := 0; i < rounds; i++ {
		a := attacks[rng.Intn(len(attacks))]
		t.Logf("round %d: %s", i, a.name)
		a.run(rng)
		r := c.run("-f", file, "up", "--progress", "plain")
		if ch.converged() {
			converged++
		} else {
			t.Errorf("round %d (%s): did not converge: ps %+v, %d VMMs; the up after it: exit %d\n%s", i, a.name, c.ps(), len(stacktest.Processes(c.ns)), r.code, r.stderr)
		}
		ch.sampleRSS()
	}
	sup := ch.supervisor()
	c.run("down", "--force", "--timeout", "5s")
	orphans := len(stacktest.Processes(c.ns))
	if sup.pid != 0 && proc.Alive(sup.pid, sup.start) {
		orphans++
	}
	wedge := "not measured"
	if ch.wedgeDetect > 0 {
		wedge = ch.wedgeDetect.Round(100 * time.Millisecond).String()
	}
	fmt.Printf("chaos: seed %d: converged %d/%d, orphans %d, max supervisor RSS %.1f MiB, wedge detected by ps in %s\n",
		seed, converged, rounds, orphans, float64(ch.maxRSS)/1024, wedge)
	if orphans > 0 {
		t.Errorf("%d processes of the namespace left after down --force", orphans)
	}
}

type chaos struct {
	t           *testing.T
	c           *cli
	file        string
	maxRSS      int64 // KiB, supervisors' VmHWM
	wedgeDetect time.Duration
}

type supProc struct {
	pid   int
	start uint64
}

func (ch *chaos) up() { ch.c.run("-f", ch.file, "up", "--progress", "plain") }

// supervisor is the namespace's running supervisor (zero when none
// answers).
func (ch *chaos) supervisor() supProc {
	sup, err := client.Dial(context.Background(), filenames.RuntimeRoot(), ch.c.stateDir, ch.c.ns)
	if err != nil {
		return supProc{}
	}
	start, _ := proc.StartTime(sup.PID())
	return supProc{sup.PID(), start}
}

func (ch *chaos) sampleRSS() {
	s := ch.supervisor()
	if s.pid == 0 {
		return
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.pid))
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			if kb, err := strconv.ParseInt(f[1], 10, 64); err == nil && kb > ch.maxRSS {
				ch.maxRSS = kb
			}
		}
	}
}

func (ch *chaos) converged() bool {
	ps := ch.c.ps()
	return len(ps) == 1 && ps["solo"].State == "ready" && ps["solo"].Stale == "" && len(stacktest.Processes(ch.c.ns)) == 1
}

func (ch *chaos) statePath() string {
	return filepath.Join(filenames.NamespaceState(ch.c.stateDir, ch.c.ns), filenames.StateFile)
}

// killSupervisorDuringUp takes the namespace down, then kills its new
// supervisor at a random moment of the next up.
func (ch *chaos) killSupervisorDuringUp(rng *rand.Rand) {
	ch.c.run("down", "--force", "--timeout", "5s")
	done := make(chan struct{})
	go func() { defer close(done); ch.up() }()
	delay := time.Duration(rng.Intn(3000)) * time.Millisecond
	select {
	case <-done:
	case <-time.After(delay):
	}
	if s := ch.supervisor(); s.pid != 0 {
		syscall.Kill(s.pid, syscall.SIGKILL)
	}
	<-done
}

// wedgeSupervisor stops the supervisor: ps must say so (the time it takes
// is the wedge detection figure), and down --force recovers.
func (ch *chaos) wedgeSupervisor(*rand.Rand) {
	ch.up()
	s := ch.supervisor()
	if s.pid == 0 {
		return
	}
	syscall.Kill(s.pid, syscall.SIGSTOP)
	t0 := time.Now()
	ps := ch.c.ps()
	if d := time.Since(t0); d > ch.wedgeDetect {
		ch.wedgeDetect = d
	}
	if ps["solo"].Stale == "" {
		ch.t.Errorf("ps with a stopped supervisor did not mark solo stale: %+v", ps["solo"])
	}
	ch.c.run("down", "--force", "--timeout", "5s")
}

func (ch *chaos) corruptState(rng *rand.Rand) {
	ch.up()
	b, err := os.ReadFile(ch.statePath())
	if err != nil || len(b) == 0 {
		return
	}
	os.WriteFile(ch.statePath(), b[:rng.Intn(len(b))], 0o600) // truncated
	if r := ch.c.run("down", "--force", "--timeout", "5s"); r.code != 0 {
		ch.t.Errorf("down --force on a truncated state: %s", r.stderr)
	}
}

func (ch *chaos) deleteState(*rand.Rand) {
	ch.up()
	os.Remove(ch.statePath())
	if r := ch.c.run("down", "--timeout", "5s"); r.code != 0 {
		ch.t.Errorf("down without state.json: %s", r.stderr)
	}
}

func (ch *chaos) concurrentUpDown(*rand.Rand) {
	var wg sync.WaitGroup
	for _, args := range [][]string{{"-f", ch.file, "up", "--progress", "plain"}, {"down", "--timeout", "5s"}, {"-f", ch.file, "up", "--progress", "plain"}} {
		wg.Add(1)
		go func() { defer wg.Done(); ch.c.run(args...) }()
	}
	wg.Wait()
}
