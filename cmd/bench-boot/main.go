// Command bench-boot measures what boot templates save, in one run, each
// variant against its cold twin in the same run (interleaved, alternating
// which goes first):
//
//  1. `up` of one VM of the quickstart's shape in a new namespace (the
//     supervisor's start included) to ready, cold against restored from
//     the template of its shape;
//  2. `up` of the quickstart (two VMs; client depends on web), cold
//     against with templates;
//  3. density: the summed proportional set size (/proc/PID/smaps_rollup)
//     of the QEMU processes of 8 idle VMs restored from one template
//     against 8 booted cold;
//  4. the cost of making a template (the VM's pause) and its size on disk.
//
// Cold runs set STACK_TEMPLATES=off for their stack; templated runs use
// the template the warm-up made.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/stackvm/stack"
	"github.com/stackvm/stack/internal/benchstat"
)

const oneVM = `network "lan" {
  subnet = "10.91.0.0/24"
}

vm "solo" {
  command = ["sh", "-c", "echo solo-up; exec sleep 100000"]
  network "lan" {}
}
`

const eightIdle = `network "lan" {
  subnet = "10.92.0.0/24"
}

vm "idle" {
  count = 8
  network "lan" {}
}
`

func main() {
	if code, started := stack.Supervise(); started {
		os.Exit(code)
	}
	runs := flag.Int("runs", 5, "measured runs of each variant")
	quickstart := flag.String("f", "examples/stacks/quickstart.hcl", "the quickstart stack file")
	density := flag.Bool("density", true, "measure the memory of 8 idle VMs (takes a while under TCG)")
	flag.Parse()
	if err := run(*runs, *quickstart, *density); err != nil {
		fmt.Fprintln(os.Stderr, "bench-boot:", err)
		os.Exit(1)
	}
}

// project loads file as namespace ns, with templates on or off.
func project(file, ns, stateDir string, templates bool) (*stack.Project, error) {
	env := os.Environ()
	if !templates {
		env = append(env, "STACK_TEMPLATES=off")
	}
	p, diags := stack.Load(stack.Options{Files: []string{file}, Namespace: ns, StateDir: stateDir, Environ: env})
	if diags.HasErrors() {
		return nil, diags
	}
	return p, nil
}

// timedUp brings p up in a fresh namespace, to ready, and down again; it
// returns the up's duration and checks how the VMs came up.
func timedUp(ctx context.Context, p *stack.Project, wantBoot string) (time.Duration, error) {
	t0 := time.Now()
	if _, err := p.Up(ctx, stack.UpOptions{}); err != nil {
		return 0, err
	}
	d := time.Since(t0)
	vms, err := p.Status(ctx)
	if err == nil {
		for _, v := range vms {
			if v.Boot != wantBoot {
				err = fmt.Errorf("%s booted %s, want %s", v.Name, v.Boot, wantBoot)
			}
		}
	}
	if derr := p.Down(ctx, stack.DownOptions{}); err == nil {
		err = derr
	}
	return d, err
}

func run(runs int, quickstart string, density bool) error {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "bench-boot")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	solo := filepath.Join(dir, "solo.hcl")
	idle := filepath.Join(dir, "idle.hcl")
	os.WriteFile(solo, []byte(oneVM), 0o600)
	os.WriteFile(idle, []byte(eightIdle), 0o600)
	state := filepath.Join(dir, "state")

	// Warm-up: the guest image, the KVM verdict, and the templates of the
	// shapes (one up with templates on makes them).
	for _, f := range []string{solo, quickstart} {
		p, err := project(f, "bench-warm", state, true)
		if err != nil {
			return err
		}
		if _, err := p.Up(ctx, stack.UpOptions{}); err != nil {
			return err
		}
		if err := p.Down(ctx, stack.DownOptions{}); err != nil {
			return err
		}
	}

	var soloCold, soloTpl, qsCold, qsTpl []time.Duration
	variants := []struct {
		file      string
		templates bool
		out       *[]time.Duration
	}{{solo, false, &soloCold}, {solo, true, &soloTpl}, {quickstart, false, &qsCold}, {quickstart, true, &qsTpl}}
	for i := 0; i < runs; i++ {
		order := []int{0, 1, 2, 3}
		if i%2 == 1 {
			order = []int{1, 0, 3, 2}
		}
		for _, j := range order {
			v := variants[j]
			boot := "cold"
			if v.templates {
				boot = "template"
			}
			p, err := project(v.file, fmt.Sprintf("bench-%d-%d", i, j), state, v.templates)
			if err != nil {
				return err
			}
			d, err := timedUp(ctx, p, boot)
			if err != nil {
				return err
			}
			*v.out = append(*v.out, d)
		}
		fmt.Fprintf(os.Stderr, "run %d: one VM cold %s, template %s; quickstart cold %s, templates %s\n", i+1,
			soloCold[i].Round(time.Millisecond), soloTpl[i].Round(time.Millisecond), qsCold[i].Round(time.Millisecond), qsTpl[i].Round(time.Millisecond))
	}
	fmt.Printf("%-44s %10s\n", "variant (median of runs)", "time")
	fmt.Printf("%-44s %10s\n", "up, one VM, cold", benchstat.Median(soloCold).Round(time.Millisecond))
	fmt.Printf("%-44s %10s\n", "up, one VM, from its template", benchstat.Median(soloTpl).Round(time.Millisecond))
	fmt.Printf("%-44s %10s\n", "up, quickstart, cold", benchstat.Median(qsCold).Round(time.Millisecond))
	fmt.Printf("%-44s %10s\n", "up, quickstart, templates", benchstat.Median(qsTpl).Round(time.Millisecond))
	fmt.Printf("one_vm_template_vs_cold=%s quickstart_templates_vs_cold=%s\n",
		benchstat.Ratio(soloTpl, soloCold), benchstat.Ratio(qsTpl, qsCold))

	if list, err := stack.Templates(); err == nil {
		for _, t := range list {
			fmt.Printf("template %s: %d CPU %d MiB %v: made in a pause of %s, %.1f MiB on disk\n", t.Meta.Key[:12],
				t.Meta.Shape.CPUs, t.Meta.Shape.MemoryMB, t.Meta.Shape.Devices, t.Meta.SaveTook.Round(time.Millisecond), float64(t.Disk)/(1<<20))
		}
	}

	if !density {
		return nil
	}
	var pss [2]int64
	for i, templates := range []bool{false, true} {
		p, err := project(idle, fmt.Sprintf("bench-density-%d", i), state, templates)
		if err != nil {
			return err
		}
		if _, err := p.Up(ctx, stack.UpOptions{}); err != nil {
			return err
		}
		time.Sleep(3 * time.Second) // idle: the guests settle
		vms, err := p.Status(ctx)
		if err != nil {
			return err
		}
		for _, v := range vms {
			kb, err := pssKB(v.PID)
			if err != nil {
				return err
			}
			pss[i] += kb
		}
		if err := p.Down(ctx, stack.DownOptions{}); err != nil {
			return err
		}
	}
	fmt.Printf("8 idle VMs, summed PSS of their QEMU processes: cold %d MiB, from one template %d MiB, ratio %.3f\n",
		pss[0]>>10, pss[1]>>10, float64(pss[1])/float64(pss[0]))
	return nil
}

// pssKB is a process's proportional set size: its pages, shared ones
// divided among their sharers.
func pssKB(pid int) (int64, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/smaps_rollup")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "Pss:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("no Pss in smaps_rollup of %d", pid)
}
