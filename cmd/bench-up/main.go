// Command bench-up measures what stack adds to booting VMs, in one run:
//
//  1. `up` of the quickstart (two VMs; client depends on web) against the
//     same two VMs booted by bare QEMU, with the exact argv and config disk
//     stack used, in parallel and one after the other (as depends_on
//     orders them), each to the same point: the guest init's ready report;
//  2. `up` of an unchanged 10-VM stack (nothing to do).
//
// Runs are interleaved so that load on the machine hits every variant
// alike. It prints a table and one line of ratios.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/stackvm/stack"
	"github.com/stackvm/stack/guestproto"
	"github.com/stackvm/stack/internal/filenames"
)

func main() {
	runs := flag.Int("runs", 5, "measured runs of each variant")
	file := flag.String("f", "examples/stacks/quickstart.hcl", "the stack to bring up")
	flag.Parse()
	if err := run(*runs, *file); err != nil {
		fmt.Fprintln(os.Stderr, "bench-up:", err)
		os.Exit(1)
	}
}

type vmm struct {
	name   string
	argv   []string
	runDir string
	config []byte
}

func run(runs int, file string) error {
	ctx := context.Background()
	stateDir, err := os.MkdirTemp("", "bench-up-state")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stateDir)
	p, diags := stack.Load(stack.Options{Files: []string{file}, Namespace: "bench-up", StateDir: stateDir})
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

	var upT, parT, seqT []time.Duration
	for i := 0; i < runs; i++ {
		t0 := time.Now()
		if _, err := p.Up(ctx, stack.UpOptions{}); err != nil {
			return err
		}
		upT = append(upT, time.Since(t0))
		if err := p.Down(ctx, stack.DownOptions{}); err != nil {
			return err
		}
		d, err := bare(vmms, true)
		if err != nil {
			return err
		}
		parT = append(parT, d)
		d, err = bare(vmms, false)
		if err != nil {
			return err
		}
		seqT = append(seqT, d)
		fmt.Fprintf(os.Stderr, "run %d: up %s, bare parallel %s, bare in order %s\n", i+1, upT[i].Round(time.Millisecond), parT[i].Round(time.Millisecond), seqT[i].Round(time.Millisecond))
	}

	noop, err := unchanged10(ctx, runs)
	if err != nil {
		return err
	}
	up, par, seq := median(upT), median(parT), median(seqT)
	fmt.Printf("%-40s %10s\n", "variant (median of runs)", "time")
	fmt.Printf("%-40s %10s\n", "stack up quickstart (2 VMs)", up.Round(time.Millisecond))
	fmt.Printf("%-40s %10s\n", "bare QEMU, both at once", par.Round(time.Millisecond))
	fmt.Printf("%-40s %10s\n", "bare QEMU, web then client", seq.Round(time.Millisecond))
	fmt.Printf("%-40s %10s\n", "stack up, unchanged 10-VM stack", noop.Round(time.Microsecond))
	fmt.Printf("overhead_vs_parallel=%.3f overhead_vs_ordered=%.3f unchanged10_ms=%.1f\n",
		float64(up)/float64(par)-1, float64(up)/float64(seq)-1, float64(noop)/float64(time.Millisecond))
	return nil
}

// capture reads the argv and config disk of every running VM of p.
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
		var argv []string
		if err := json.Unmarshal(raw, &argv); err != nil {
			return nil, fmt.Errorf("capture %s: %w", n, err)
		}
		cfg, err := os.ReadFile(filepath.Join(dir, filenames.RunConfigDisk))
		if err != nil {
			return nil, fmt.Errorf("capture %s: %w", n, err)
		}
		out = append(out, vmm{name: n, argv: argv, runDir: dir, config: cfg})
	}
	// web first: the order depends_on imposes on the quickstart.
	sort.Slice(out, func(i, j int) bool { return out[i].name == "web" })
	return out, nil
}

// bare boots the VMs with plain QEMU processes (no stack) to the guest
// init's ready report, at once or one after the other.
func bare(vmms []vmm, parallel bool) (time.Duration, error) {
	t0 := time.Now()
	errs := make(chan error, len(vmms))
	boot := func(v vmm) {
		dir, err := os.MkdirTemp("", "bu")
		if err != nil {
			errs <- err
			return
		}
		defer os.RemoveAll(dir)
		if err := os.WriteFile(filepath.Join(dir, filenames.RunConfigDisk), v.config, 0o600); err != nil {
			errs <- err
			return
		}
		var argv []string
		for _, a := range v.argv[1:] {
			if a == "-S" { // the driver starts paused for its console relay
				continue
			}
			argv = append(argv, strings.ReplaceAll(a, v.runDir, dir))
		}
		cmd := exec.Command(v.argv[0], argv...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			errs <- err
			return
		}
		defer func() { cmd.Process.Kill(); cmd.Wait() }()
		errs <- waitReady(filepath.Join(dir, filenames.AgentSocket), 2*time.Minute)
	}
	if parallel {
		for _, v := range vmms {
			go boot(v)
		}
		for range vmms {
			if err := <-errs; err != nil {
				return 0, err
			}
		}
	} else {
		for _, v := range vmms {
			boot(v)
			if err := <-errs; err != nil {
				return 0, err
			}
		}
	}
	return time.Since(t0), nil
}

// waitReady connects to the guest agent socket and waits for the guest
// init's ready report.
func waitReady(sock string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var c net.Conn
	var err error
	for time.Now().Before(deadline) {
		if c, err = net.Dial("unix", sock); err == nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if c == nil {
		return fmt.Errorf("agent socket %s: %v", sock, err)
	}
	defer c.Close()
	c.SetDeadline(deadline)
	hello, _ := json.Marshal(guestproto.Message{Type: guestproto.TypeHello})
	c.Write(append(hello, '\n'))
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		var m guestproto.Message
		if json.Unmarshal(sc.Bytes(), &m) != nil {
			continue
		}
		if m.Type == guestproto.TypeReady || (m.Status != nil && m.Status.Ready) {
			return nil
		}
	}
	return fmt.Errorf("no ready report on %s: %v", sock, sc.Err())
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
	return median(ts), nil
}

func median(ts []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ts...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}
