// Command bench-up measures what stack adds to booting VMs, in one run:
//
//  1. `up` of the quickstart (two VMs; client depends on web) against the
//     same two VMs booted by bare QEMU, with the exact argv and config disk
//     stack used, in parallel and one after the other (as depends_on
//     orders them), each to the same point: the guest init's ready report;
//     in parallel also with each console read, as stack reads it, and in
//     parallel with the dependent's workload held until what it depends on
//     is ready (a tcp-probed VM once its guest init reports the port
//     listening): the end point `up` reaches;
//  2. with -flat, `up` of the same two VMs without depends_on and without
//     the tcp probe, which is what bare QEMU in parallel does: the gap to
//     bare QEMU is then stack's own work alone;
//  3. `up` of an unchanged 10-VM stack (nothing to do).
//
// Runs are interleaved, and alternate which side goes first, so that load
// on the machine hits every variant alike. It prints a table of medians and
// one line of overheads: the median of the per-run ratios, with their
// range.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/stackvm/stack"
	"github.com/stackvm/stack/cloudinit"
	"github.com/stackvm/stack/disks"
	"github.com/stackvm/stack/guestproto"
	"github.com/stackvm/stack/internal/benchstat"
	"github.com/stackvm/stack/internal/filenames"
)

func main() {
	if code, started := stack.Supervise(); started {
		os.Exit(code) // re-executed as a namespace's supervisor
	}
	// The bare runs replay stack's argv and config disks; a VM restored
	// from a boot template has neither (it parks and waits for the
	// supervisor), so this benchmark compares cold boots. cmd/bench-boot
	// measures templates.
	os.Setenv("STACK_TEMPLATES", "off")
	runs := flag.Int("runs", 5, "measured runs of each variant")
	file := flag.String("f", "examples/stacks/quickstart.hcl", "the stack to bring up")
	flat := flag.String("flat", "", "optional: the same VMs without depends_on and readiness probes")
	var vars varList
	flag.Var(&vars, "var", "a stack variable NAME=VALUE (repeatable)")
	flag.Parse()
	if err := run(*runs, *file, *flat, vars); err != nil {
		fmt.Fprintln(os.Stderr, "bench-up:", err)
		os.Exit(1)
	}
}

type vmm struct {
	name     string
	argv     []string
	runDir   string
	config   []byte // initramfs mode: the guest config disk
	stateDir string // cloud-init mode: where the overlay and seed were
	seed     []byte
	rootDisk string // cloud-init mode: the base image
	ready    string // cloud-init mode: the console line that says ready
	address  string
	deps     []string // block addresses of the VMs it depends on
	listen   bool     // its readiness is a tcp probe: ready once the port listens
}

type varList []string

func (v *varList) String() string     { return strings.Join(*v, ",") }
func (v *varList) Set(s string) error { *v = append(*v, s); return nil }

func run(runs int, file, flatFile string, vars []string) error {
	ctx := context.Background()
	stateDir, err := os.MkdirTemp("", "bench-up-state")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stateDir)
	p, diags := stack.Load(stack.Options{Files: []string{file}, Namespace: "bench-up", StateDir: stateDir, Vars: vars})
	if diags.HasErrors() {
		return diags
	}
	// Warm-up: builds the guest image if needed and captures each VM's
	// exact argv and config disk for the bare runs.
	if _, err := p.Up(ctx, stack.UpOptions{}); err != nil {
		return err
	}
	vmms, err := capture(p)
	if err != nil {
		return err
	}
	if err := p.Down(ctx, stack.DownOptions{}); err != nil {
		return err
	}
	var flat *stack.Project
	if flatFile != "" {
		flat, diags = stack.Load(stack.Options{Files: []string{flatFile}, Namespace: "bench-up-flat", StateDir: stateDir, Vars: vars})
		if diags.HasErrors() {
			return diags
		}
	}

	var upT, parT, conT, seqT, relT, flatT []time.Duration
	// Into each up: when its first VMM started and its last VM was ready.
	var upPhases, flatPhases phases
	timedUp := func(p *stack.Project, out *[]time.Duration, ph *phases) error {
		t0 := time.Now()
		rec := ph.recorder(t0)
		if _, err := p.Up(ctx, stack.UpOptions{Progress: rec}); err != nil {
			return err
		}
		*out = append(*out, time.Since(t0))
		ph.done()
		return p.Down(ctx, stack.DownOptions{})
	}
	stackUp := func() error {
		if err := timedUp(p, &upT, &upPhases); err != nil {
			return err
		}
		if flat == nil {
			return nil
		}
		return timedUp(flat, &flatT, &flatPhases)
	}
	bareAll := func() error {
		for _, v := range []struct {
			mode    bareMode
			console bool
			out     *[]time.Duration
		}{{atOnce, false, &parT}, {atOnce, true, &conT}, {inOrder, false, &seqT}, {released, false, &relT}} {
			d, err := bare(vmms, v.mode, v.console)
			if err != nil {
				return err
			}
			*v.out = append(*v.out, d)
		}
		return nil
	}
	for i := 0; i < runs; i++ {
		// Alternate which side goes first, so that whatever the previous
		// variant leaves behind (freed guest memory, a warm page cache)
		// weighs on both sides alike.
		first, second := stackUp, bareAll
		if i%2 == 1 {
			first, second = bareAll, stackUp
		}
		if err := first(); err != nil {
			return err
		}
		if err := second(); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "run %d: up %s, bare parallel %s, bare in order %s, bare parallel held %s", i+1, upT[i].Round(time.Millisecond), parT[i].Round(time.Millisecond), seqT[i].Round(time.Millisecond), relT[i].Round(time.Millisecond))
		if flat != nil {
			fmt.Fprintf(os.Stderr, ", up without depends_on/probe %s", flatT[i].Round(time.Millisecond))
		}
		fmt.Fprintln(os.Stderr)
	}

	noop, err := unchanged10(ctx, runs)
	if err != nil {
		return err
	}
	up, par, seq := benchstat.Median(upT), benchstat.Median(parT), benchstat.Median(seqT)
	fmt.Printf("%-40s %10s\n", "variant (median of runs)", "time")
	fmt.Printf("%-40s %10s\n", "stack up quickstart (2 VMs)", up.Round(time.Millisecond))
	fmt.Printf("%-40s %10s\n", "bare QEMU, both at once", par.Round(time.Millisecond))
	fmt.Printf("%-40s %10s\n", "bare QEMU, both at once, console read", benchstat.Median(conT).Round(time.Millisecond))
	fmt.Printf("%-40s %10s\n", "bare QEMU, web then client", seq.Round(time.Millisecond))
	fmt.Printf("%-40s %10s\n", "bare QEMU, at once, client held", benchstat.Median(relT).Round(time.Millisecond))
	if flat != nil {
		fmt.Printf("%-40s %10s\n", "stack up, no depends_on, no tcp probe", benchstat.Median(flatT).Round(time.Millisecond))
	}
	fmt.Printf("%-40s %10s\n", "stack up, unchanged 10-VM stack", noop.Round(time.Microsecond))
	fmt.Printf("stack up quickstart: first VMM started after %s, last VM ready after %s, returned after %s (medians)\n",
		benchstat.Median(upPhases.vmm).Round(time.Millisecond), benchstat.Median(upPhases.ready).Round(time.Millisecond), up.Round(time.Millisecond))
	if flat != nil {
		fmt.Printf("stack up without depends_on/probe: first VMM started after %s, last VM ready after %s, returned after %s (medians)\n",
			benchstat.Median(flatPhases.vmm).Round(time.Millisecond), benchstat.Median(flatPhases.ready).Round(time.Millisecond), benchstat.Median(flatT).Round(time.Millisecond))
	}
	// Overheads are medians of per-run ratios: each run's up against the
	// bare boots of the same run, which shared its moment's machine load.
	fmt.Printf("overhead_vs_parallel=%s overhead_vs_ordered=%s unchanged10_ms=%.1f",
		benchstat.Overhead(upT, parT), benchstat.Overhead(upT, seqT), float64(noop)/float64(time.Millisecond))
	fmt.Printf(" overhead_vs_parallel_console_read=%s overhead_vs_parallel_held=%s", benchstat.Overhead(upT, conT), benchstat.Overhead(upT, relT))
	if flat != nil {
		fmt.Printf(" flat_overhead_vs_parallel=%s flat_overhead_vs_parallel_console_read=%s", benchstat.Overhead(flatT, parT), benchstat.Overhead(flatT, conT))
	}
	fmt.Println()
	return nil
}

// phases collects, per up, when its first VMM started and its last VM was
// ready, from the up's events.
type phases struct {
	mu          sync.Mutex
	t0          time.Time
	first, last time.Time
	vmm, ready  []time.Duration
}

func (ph *phases) recorder(t0 time.Time) func(stack.Event) {
	ph.t0, ph.first, ph.last = t0, time.Time{}, time.Time{}
	return func(ev stack.Event) {
		ph.mu.Lock()
		defer ph.mu.Unlock()
		switch ev.Phase {
		case stack.PhaseVMMStart:
			if ph.first.IsZero() {
				ph.first = ev.Time
			}
		case stack.PhaseReady:
			ph.last = ev.Time
		}
	}
}

func (ph *phases) done() {
	ph.mu.Lock()
	defer ph.mu.Unlock()
	ph.vmm = append(ph.vmm, ph.first.Sub(ph.t0))
	ph.ready = append(ph.ready, ph.last.Sub(ph.t0))
}

// capture reads the argv and boot inputs of every running VM of p.
func capture(p *stack.Project) ([]vmm, error) {
	names, err := p.VMNames()
	if err != nil {
		return nil, err
	}
	var out []vmm
	for _, n := range names {
		dir := filenames.VMRuntime(filenames.RuntimeRoot(), p.Stack.Namespace, n)
		raw, err := os.ReadFile(filepath.Join(dir, filenames.ArgsFile))
		if err != nil {
			return nil, fmt.Errorf("capture %s: %w", n, err)
		}
		v := vmm{name: n, runDir: dir, stateDir: filenames.VMState(p.StateDir, p.Stack.Namespace, n)}
		if err := json.Unmarshal(raw, &v.argv); err != nil {
			return nil, fmt.Errorf("capture %s: %w", n, err)
		}
		for _, sv := range p.Stack.VMs {
			if sv.Name == n {
				v.rootDisk, v.address, v.deps, v.listen = sv.RootDisk, sv.Address, sv.DependsOn, sv.Ready.TCP != 0
			}
		}
		if v.rootDisk == "" {
			if v.config, err = os.ReadFile(filepath.Join(dir, filenames.RunConfigDisk)); err != nil {
				return nil, fmt.Errorf("capture %s: %w", n, err)
			}
		} else {
			if v.seed, err = os.ReadFile(filepath.Join(v.stateDir, filenames.SeedISO)); err != nil {
				return nil, fmt.Errorf("capture %s: %w", n, err)
			}
			_, files, err := cloudinit.ReadISO(filepath.Join(v.stateDir, filenames.SeedISO))
			if err != nil {
				return nil, fmt.Errorf("capture %s: %w", n, err)
			}
			var meta struct {
				InstanceID string `yaml:"instance-id"`
			}
			if err := yaml.Unmarshal(files[cloudinit.FileMetaData], &meta); err != nil {
				return nil, fmt.Errorf("capture %s: meta-data: %w", n, err)
			}
			v.ready = cloudinit.ReadyLine(meta.InstanceID)
		}
		out = append(out, v)
	}
	// web first: the order depends_on imposes on the quickstart.
	sort.Slice(out, func(i, j int) bool { return out[i].name == "web" })
	return out, nil
}

// bareMode is how bare QEMU orders the VMs.
type bareMode int

const (
	// atOnce starts every VM and every workload at once.
	atOnce bareMode = iota
	// inOrder boots each VM after the one before is ready.
	inOrder
	// released starts every VM at once, as stack does, and holds a
	// dependent's workload until what it depends on is ready: the end
	// point of `up` (a tcp-probed VM counts as ready once the guest init
	// reports its port listening, one step short of stack's probe).
	released
)

// bare boots the VMs with plain QEMU processes (no stack) to the guest
// init's ready report, in the order mode says. With readConsole, each VM's
// serial console is read to a file as stack does (QEMU then sends the
// console byte by byte instead of dropping it).
func bare(vmms []vmm, mode bareMode, readConsole bool) (time.Duration, error) {
	t0 := time.Now()
	errs := make(chan error, len(vmms))
	readyCh := map[string]chan struct{}{}
	for _, v := range vmms {
		readyCh[v.address] = make(chan struct{})
	}
	// release returns a channel closed once every VM of v's dependencies
	// is ready (nil: start the workload at once).
	release := func(v vmm) <-chan struct{} {
		if mode != released || len(v.deps) == 0 {
			return nil
		}
		ch := make(chan struct{})
		go func() {
			for _, w := range vmms {
				for _, d := range v.deps {
					if w.address == d || strings.HasPrefix(w.address, d+"[") {
						<-readyCh[w.address]
					}
				}
			}
			close(ch)
		}()
		return ch
	}
	boot := func(v vmm) {
		dir, err := os.MkdirTemp("", "bu")
		if err != nil {
			errs <- err
			return
		}
		defer os.RemoveAll(dir)
		replace := strings.NewReplacer(v.runDir, dir, v.stateDir, dir)
		if v.rootDisk == "" {
			err = os.WriteFile(filepath.Join(dir, filenames.RunConfigDisk), v.config, 0o600)
		} else {
			err = os.WriteFile(filepath.Join(dir, filenames.SeedISO), v.seed, 0o600)
			if err == nil {
				err = disks.CreateOverlay(context.Background(), v.rootDisk, filepath.Join(dir, filenames.OverlayDisk))
			}
		}
		if err != nil {
			errs <- err
			return
		}
		var argv []string
		for _, a := range v.argv[1:] {
			if a == "-S" { // the driver starts paused for its console relay
				continue
			}
			argv = append(argv, replace.Replace(a))
		}
		cmd := exec.Command(v.argv[0], argv...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			errs <- err
			return
		}
		defer func() { cmd.Process.Kill(); cmd.Wait() }()
		if readConsole {
			go func() {
				c, err := dialRetry(filepath.Join(dir, filenames.ConsoleVMMSocket), time.Minute)
				if err != nil {
					return
				}
				defer c.Close()
				if f, err := os.Create(filepath.Join(dir, filenames.ConsoleLog)); err == nil {
					io.Copy(f, c)
					f.Close()
				}
			}()
		}
		if v.rootDisk == "" {
			err = waitReady(filepath.Join(dir, filenames.AgentSocket), 2*time.Minute, release(v), mode == released && v.listen)
		} else {
			err = waitConsole(filepath.Join(dir, filenames.ConsoleVMMSocket), v.ready, 10*time.Minute)
		}
		if err == nil {
			// Closed here for both kinds of VM: a cloud-init VM's wait
			// knows nothing of readyCh, and the loop below waits for it.
			close(readyCh[v.address])
		}
		errs <- err
		if mode == released && err == nil {
			// Keep the VM up until every VM is ready: a dependent may
			// still be booting.
			for _, w := range vmms {
				<-readyCh[w.address]
			}
		}
	}
	if mode == inOrder {
		for _, v := range vmms {
			boot(v)
			if err := <-errs; err != nil {
				return 0, err
			}
		}
		return time.Since(t0), nil
	}
	for _, v := range vmms {
		go boot(v)
	}
	for range vmms {
		if err := <-errs; err != nil {
			return 0, err
		}
	}
	return time.Since(t0), nil
}

// dialRetry connects to a unix socket that QEMU is about to create, every
// 5 ms until timeout; the connection's deadline is the same timeout.
func dialRetry(sock string, timeout time.Duration) (net.Conn, error) {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.SetDeadline(deadline)
			return c, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("dial %s: %w", sock, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitReady connects to the guest agent socket and waits for the guest
// init's ready report, or with listen for a watched port listening. A held
// workload is started once release is closed (at once when release is nil).
func waitReady(sock string, timeout time.Duration, release <-chan struct{}, listen bool) error {
	c, err := dialRetry(sock, timeout)
	if err != nil {
		return fmt.Errorf("agent socket: %w", err)
	}
	defer c.Close()
	var wmu sync.Mutex
	send := func(typ string) error {
		b, _ := json.Marshal(guestproto.Message{Type: typ})
		wmu.Lock()
		defer wmu.Unlock()
		_, err := c.Write(append(b, '\n'))
		return err
	}
	send(guestproto.TypeHello)
	started := false
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		var m guestproto.Message
		if json.Unmarshal(sc.Bytes(), &m) != nil {
			continue
		}
		isReady := m.Type == guestproto.TypeReady || (m.Status != nil && m.Status.Ready)
		if listen {
			isReady = m.Status != nil && len(m.Status.Listening) > 0
		}
		if isReady {
			return nil
		}
		// The captured config of a VM that stack booted early holds its
		// workload until the host says start.
		if m.Status != nil && m.Status.Held && !started {
			started = true
			go func() {
				if release != nil {
					<-release
				}
				send(guestproto.TypeStart)
			}()
		}
	}
	return fmt.Errorf("no ready report on %s: %v", sock, sc.Err())
}

// waitConsole reads the serial console socket until a line contains want.
func waitConsole(sock, want string, timeout time.Duration) error {
	c, err := dialRetry(sock, timeout)
	if err != nil {
		return fmt.Errorf("console socket: %w", err)
	}
	defer c.Close()
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), want) {
			return nil
		}
	}
	return fmt.Errorf("no %q on the console: %v", want, sc.Err())
}

// unchanged10 times `up` of a 10-VM stack that is already up.
func unchanged10(ctx context.Context, runs int) (time.Duration, error) {
	dir, err := os.MkdirTemp("", "bench-up-10")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	src := "network \"lan\" {\n  subnet = \"10.99.0.0/24\"\n}\n\nvm \"n\" {\n  count   = 10\n  command = [\"sleep\", \"1000000\"]\n  network \"lan\" {}\n}\n"
	if err := os.WriteFile(filepath.Join(dir, "stack.hcl"), []byte(src), 0o644); err != nil {
		return 0, err
	}
	p, diags := stack.Load(stack.Options{Dir: dir, Namespace: "bench-up-10", StateDir: filepath.Join(dir, "state")})
	if diags.HasErrors() {
		return 0, diags
	}
	if _, err := p.Up(ctx, stack.UpOptions{}); err != nil {
		return 0, err
	}
	defer p.Down(ctx, stack.DownOptions{})
	var ts []time.Duration
	for i := 0; i < runs*4; i++ {
		q, diags := stack.Load(stack.Options{Dir: dir, Namespace: "bench-up-10", StateDir: filepath.Join(dir, "state")})
		if diags.HasErrors() {
			return 0, diags
		}
		t0 := time.Now()
		plan, err := q.Up(ctx, stack.UpOptions{})
		if err != nil {
			return 0, err
		}
		ts = append(ts, time.Since(t0))
		if plan.HasChanges() {
			return 0, fmt.Errorf("unchanged stack planned changes:\n%s", plan)
		}
	}
	return benchstat.Median(ts), nil
}
