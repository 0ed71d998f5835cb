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
//  4. the cost of making a template (the VM's pause) and its size on disk;
//  5. a warm pool: from the supervisor handing a VM a pool member (its
//     "taken from the warm pool" event) to the VM's ready event, and the
//     whole up that adds it;
//  6. with -image, `up` to ready of one VM running a cached OCI image's
//     web server (the example image: busybox httpd behind a shell script)
//     against the built-in image running busybox httpd, cold and with
//     templates.
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
	"slices"
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

const pooled = `variable "n" {
  default = 1
}

network "lan" {
  subnet = "10.95.0.0/24"
}

vm "w" {
  count   = var.n
  pool    = 1
  command = ["sh", "-c", "echo w-up; exec sleep 100000"]
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

// imageWeb and builtinWeb serve HTTP on port 8080 from one VM each: the
// example OCI image's entrypoint, and the built-in image's busybox httpd.
const imageWeb = `variable "image" {}

network "lan" {
  subnet = "10.96.0.0/24"
}

vm "web" {
  image = var.image
  env = {
    PORT = "8080"
  }
  network "lan" {}
  ready {
    tcp = 8080
  }
}
`

const builtinWeb = `network "lan" {
  subnet = "10.97.0.0/24"
}

vm "web" {
  command = ["sh", "-c", "mkdir -p /srv/www && echo hello > /srv/www/index.html && exec httpd -f -p 8080 -h /srv/www"]
  network "lan" {}
  ready {
    tcp = 8080
  }
}
`

func main() {
	if code, started := stack.Supervise(); started {
		os.Exit(code)
	}
	runs := flag.Int("runs", 5, "measured runs of each variant")
	quickstart := flag.String("f", "examples/stacks/quickstart.hcl", "the quickstart stack file")
	density := flag.Bool("density", true, "measure the memory of 8 idle VMs (takes a while under TCG)")
	imageOnly := flag.Bool("image-only", false, "with -image: measure only the image against the built-in image")
	image := flag.String("image", "", "optional: an OCI image reference whose up to ready is measured against the built-in image's (the example: oci:examples/images/web/layout:web)")
	flag.Parse()
	if *image != "" {
		abs, err := absImageRef(*image)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench-boot:", err)
			os.Exit(1)
		}
		*image = abs
	}
	var err error
	if *imageOnly && *image != "" {
		err = runImageOnly(*runs, *image)
	} else {
		err = run(*runs, *quickstart, *density, *image)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-boot:", err)
		os.Exit(1)
	}
}

// absImageRef makes an oci: or docker-archive: reference's path absolute:
// the benchmark's stack files live in a temporary directory.
func absImageRef(ref string) (string, error) {
	for _, transport := range []string{"oci:", "docker-archive:"} {
		if rest, ok := strings.CutPrefix(ref, transport); ok && !filepath.IsAbs(rest) {
			abs, err := filepath.Abs(rest)
			return transport + abs, err
		}
	}
	return ref, nil
}

// project loads file as namespace ns, with templates on or off.
func project(file, ns, stateDir string, templates bool, vars ...string) (*stack.Project, error) {
	env := os.Environ()
	if !templates {
		env = append(env, "STACK_TEMPLATES=off")
	}
	p, diags := stack.Load(stack.Options{Files: []string{file}, Namespace: ns, StateDir: stateDir, Environ: env, Vars: vars})
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

func run(runs int, quickstart string, density bool, image string) error {
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
	if err := warmUp(ctx, state, "bench-warm", nil, solo, quickstart); err != nil {
		return err
	}
	var soloCold, soloTpl, qsCold, qsTpl []time.Duration
	err = interleave(ctx, state, "bench", runs, nil, []variant{
		{solo, false, &soloCold}, {solo, true, &soloTpl}, {quickstart, false, &qsCold}, {quickstart, true, &qsTpl},
	}, func(i int) {
		fmt.Fprintf(os.Stderr, "run %d: one VM cold %s, template %s; quickstart cold %s, templates %s\n", i+1,
			soloCold[i].Round(time.Millisecond), soloTpl[i].Round(time.Millisecond), qsCold[i].Round(time.Millisecond), qsTpl[i].Round(time.Millisecond))
	})
	if err != nil {
		return err
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

	if err := poolClaims(ctx, dir, state, runs); err != nil {
		return err
	}
	if image != "" {
		if err := imageAgainstBuiltin(ctx, dir, state, runs, image); err != nil {
			return err
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

func runImageOnly(runs int, image string) error {
	dir, err := os.MkdirTemp("", "bench-boot")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	return imageAgainstBuiltin(context.Background(), dir, filepath.Join(dir, "state"), runs, image)
}

// imageAgainstBuiltin measures up to ready of one web server VM from a
// cached OCI image against the built-in image's, cold and with templates,
// interleaved. The warm-up pulls and converts the image and makes both
// shapes' templates, so the image runs pay only the cached image's
// resolve, as every up after the first does.
func imageAgainstBuiltin(ctx context.Context, dir, state string, runs int, image string) error {
	imgFile := filepath.Join(dir, "image-web.hcl")
	bltFile := filepath.Join(dir, "builtin-web.hcl")
	os.WriteFile(imgFile, []byte(imageWeb), 0o600)
	os.WriteFile(bltFile, []byte(builtinWeb), 0o600)
	// Only the image's stack declares the variable.
	varsOf := func(file string) []string {
		if file == imgFile {
			return []string{"image=" + image}
		}
		return nil
	}
	if err := warmUp(ctx, state, "bench-warm-web", varsOf, imgFile, bltFile); err != nil {
		return err
	}
	var imgCold, bltCold, imgTpl, bltTpl []time.Duration
	err := interleave(ctx, state, "bench-web", runs, varsOf, []variant{
		{imgFile, false, &imgCold}, {bltFile, false, &bltCold}, {imgFile, true, &imgTpl}, {bltFile, true, &bltTpl},
	}, func(i int) {
		fmt.Fprintf(os.Stderr, "run %d: web from the image cold %s, built-in cold %s; image template %s, built-in template %s\n", i+1,
			imgCold[i].Round(time.Millisecond), bltCold[i].Round(time.Millisecond), imgTpl[i].Round(time.Millisecond), bltTpl[i].Round(time.Millisecond))
	})
	if err != nil {
		return err
	}
	fmt.Printf("%-44s %10s\n", "up, web from the OCI image, cold", benchstat.Median(imgCold).Round(time.Millisecond))
	fmt.Printf("%-44s %10s\n", "up, web from the built-in image, cold", benchstat.Median(bltCold).Round(time.Millisecond))
	fmt.Printf("%-44s %10s\n", "up, web from the OCI image, template", benchstat.Median(imgTpl).Round(time.Millisecond))
	fmt.Printf("%-44s %10s\n", "up, web from the built-in image, template", benchstat.Median(bltTpl).Round(time.Millisecond))
	fmt.Printf("image_vs_builtin_cold=%s image_vs_builtin_templates=%s\n", benchstat.Ratio(imgCold, bltCold), benchstat.Ratio(imgTpl, bltTpl))
	return nil
}

// warmUp brings each file up once with templates on, and down: the guest
// image, the KVM verdict and the templates of the shapes are made outside
// the measurement. vars gives a file's variables (nil: none).
func warmUp(ctx context.Context, state, ns string, vars func(string) []string, files ...string) error {
	for _, f := range files {
		var vs []string
		if vars != nil {
			vs = vars(f)
		}
		p, err := project(f, ns, state, true, vs...)
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
	return nil
}

// variant is one measured up: a stack file, cold or with templates, and
// where its durations go.
type variant struct {
	file      string
	templates bool
	out       *[]time.Duration
}

// interleave times each of four variants runs times, each in a new
// namespace, alternating which of each pair goes first so that load on
// the machine hits them alike; after each run it calls logRun.
func interleave(ctx context.Context, state, prefix string, runs int, vars func(string) []string, variants []variant, logRun func(run int)) error {
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
			var vs []string
			if vars != nil {
				vs = vars(v.file)
			}
			p, err := project(v.file, fmt.Sprintf("%s-%d-%d", prefix, i, j), state, v.templates, vs...)
			if err != nil {
				return err
			}
			d, err := timedUp(ctx, p, boot)
			if err != nil {
				return err
			}
			*v.out = append(*v.out, d)
		}
		logRun(i)
	}
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

// poolClaims measures taking VMs from a warm pool: the stack grows from
// one VM to two (the second taken from the pool), then shrinks back and
// waits for the pool to refill, runs times.
func poolClaims(ctx context.Context, dir, state string, runs int) error {
	file := filepath.Join(dir, "pooled.hcl")
	os.WriteFile(file, []byte(pooled), 0o600)
	load := func(n int) (*stack.Project, error) {
		p, diags := stack.Load(stack.Options{Files: []string{file}, Namespace: "bench-pool", StateDir: state, Vars: []string{fmt.Sprintf("n=%d", n)}})
		if diags.HasErrors() {
			return nil, diags
		}
		return p, nil
	}
	one, err := load(1)
	if err != nil {
		return err
	}
	two, err := load(2)
	if err != nil {
		return err
	}
	defer one.Down(ctx, stack.DownOptions{})
	if _, err := one.Up(ctx, stack.UpOptions{}); err != nil {
		return err
	}
	var claims, ups []time.Duration
	for i := 0; i < runs; i++ {
		if err := waitPoolFull(ctx, one); err != nil {
			return err
		}
		var taken, ready time.Time
		t0 := time.Now()
		_, err := two.Up(ctx, stack.UpOptions{Progress: func(ev stack.Event) {
			switch {
			case ev.Phase == stack.PhaseBooting && strings.Contains(ev.Message, "warm pool"):
				taken = ev.Time
			case ev.Phase == stack.PhaseReady && ev.Address == "vm.w[1]":
				ready = ev.Time
			}
		}})
		if err != nil {
			return err
		}
		ups = append(ups, time.Since(t0))
		if taken.IsZero() || ready.IsZero() {
			return fmt.Errorf("run %d: vm.w[1] was not taken from the pool", i+1)
		}
		claims = append(claims, ready.Sub(taken))
		if _, err := one.Up(ctx, stack.UpOptions{}); err != nil {
			return err
		}
	}
	fmt.Printf("warm pool: taken to ready %s [%s..%s], up adding the VM %s (medians, %d runs)\n",
		benchstat.Median(claims).Round(time.Millisecond), slices.Min(claims).Round(time.Millisecond), slices.Max(claims).Round(time.Millisecond),
		benchstat.Median(ups).Round(time.Millisecond), runs)
	return nil
}

func waitPoolFull(ctx context.Context, p *stack.Project) error {
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		pools, err := p.Pools(ctx)
		if err != nil {
			return err
		}
		if len(pools) == 1 && pools[0].Ready == pools[0].Size {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("the pool did not fill")
}
