// Command bench-snapshot measures snapshot restores in one run, each
// against its baseline in the same run (interleaved, alternating which
// goes first):
//
//  1. the quickstart: `up` from nothing in a new namespace (the default,
//     boot templates on, and cold) against restoring its snapshot into a new
//     namespace (what stacktest.WithSnapshot does for every test after the
//     first), and against restoring it over the running namespace;
//  2. the same two containers with docker-compose (busybox httpd and a
//     wget loop, images built FROM scratch from the host's static
//     busybox), from `up -d` to the web container answering, when a
//     Docker engine is at hand;
//  3. with -debian DIR, the Debian cloud-init example: `up` against its
//     snapshot's restore;
//  4. each stack's save: how long the VMs were paused, the whole save, and
//     the snapshot's size on disk.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/stackvm/stack"
	"github.com/stackvm/stack/internal/benchstat"
)

func main() {
	if code, started := stack.Supervise(); started {
		os.Exit(code)
	}
	runs := flag.Int("runs", 5, "measured runs of each variant")
	quickstart := flag.String("f", "examples/stacks/quickstart.hcl", "the quickstart stack file")
	debian := flag.String("debian", "", "directory of the Debian image: also measure the cloud-init example")
	cloudInit := flag.String("cloud-init", "examples/stacks/cloud-init.hcl", "the cloud-init example stack file")
	flag.Parse()
	if err := run(*runs, *quickstart, *debian, *cloudInit); err != nil {
		fmt.Fprintln(os.Stderr, "bench-snapshot:", err)
		os.Exit(1)
	}
}

type bench struct {
	ctx   context.Context
	state string
	vars  []string
	env   []string // nil: the process's
}

func (b *bench) project(file, ns string) (*stack.Project, error) {
	p, diags := stack.Load(stack.Options{Files: []string{file}, Namespace: ns, StateDir: b.state, Vars: b.vars, Environ: b.env})
	if diags.HasErrors() {
		return nil, diags
	}
	return p, nil
}

// saved brings file up as namespace src and saves it as snapshot "bench".
func (b *bench) saved(file, src string) error {
	p, err := b.project(file, src)
	if err != nil {
		return err
	}
	t0 := time.Now()
	if _, err := p.Up(b.ctx, stack.UpOptions{}); err != nil {
		return err
	}
	fmt.Printf("%s: up (first, makes templates) %s\n", src, time.Since(t0).Round(time.Millisecond))
	t0 = time.Now()
	snap, err := p.SaveSnapshot(b.ctx, "bench", stack.SnapshotOptions{})
	if err != nil {
		return err
	}
	fmt.Printf("%s: save %s (VMs paused %s), %.1f MiB on disk\n", src, time.Since(t0).Round(time.Millisecond),
		snap.Paused.Round(time.Millisecond), float64(snap.Bytes)/(1<<20))
	return p.Down(b.ctx, stack.DownOptions{})
}

// up times an up of file from nothing in namespace ns, and takes it down;
// cold, with boot templates off.
func (b *bench) up(file, ns string, cold bool) (time.Duration, error) {
	b.env = nil
	if cold {
		b.env = append(os.Environ(), "STACK_TEMPLATES=off")
	}
	defer func() { b.env = nil }()
	p, err := b.project(file, ns)
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	if _, err := p.Up(b.ctx, stack.UpOptions{}); err != nil {
		return 0, err
	}
	d := time.Since(t0)
	return d, p.Down(b.ctx, stack.DownOptions{StopTimeout: time.Millisecond})
}

// restore times restoring src's snapshot into the new namespace ns, then
// (over) restoring it again into ns while it runs, and takes ns down.
func (b *bench) restore(src, ns string) (fresh, over time.Duration, err error) {
	p, err := stack.ForNamespace(ns, b.state)
	if err != nil {
		return 0, 0, err
	}
	opts := stack.RestoreOptions{From: src}
	t0 := time.Now()
	if _, err := p.RestoreSnapshot(b.ctx, "bench", opts); err != nil {
		return 0, 0, err
	}
	fresh = time.Since(t0)
	if err := readyAll(b.ctx, p); err != nil {
		return 0, 0, err
	}
	t0 = time.Now()
	if _, err := p.RestoreSnapshot(b.ctx, "bench", opts); err != nil {
		return 0, 0, err
	}
	over = time.Since(t0)
	if err := readyAll(b.ctx, p); err != nil {
		return 0, 0, err
	}
	return fresh, over, p.Down(b.ctx, stack.DownOptions{StopTimeout: time.Millisecond})
}

// readyAll checks that every VM of p is ready (a restore returns then).
func readyAll(ctx context.Context, p *stack.Project) error {
	vms, err := p.Status(ctx)
	if err != nil {
		return err
	}
	for _, v := range vms {
		if v.State != "ready" || v.Boot != "snapshot" {
			return fmt.Errorf("%s after restore: %s, boot %s", v.Name, v.State, v.Boot)
		}
	}
	return nil
}

func run(runs int, quickstart, debian, cloudInit string) error {
	dir, err := os.MkdirTemp("", "bench-snapshot")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	b := &bench{ctx: context.Background(), state: filepath.Join(dir, "state")}
	if runs == 0 {
		return runCloudInit(b, debian, cloudInit)
	}
	if err := b.saved(quickstart, "bsrc"); err != nil {
		return err
	}
	dc, dcErr := newCompose(dir)
	if dcErr != nil {
		fmt.Println("docker-compose: not measured:", dcErr)
	} else {
		defer dc.close()
	}
	var ups, colds, fresh, over, docker []time.Duration
	for i := range runs {
		steps := []func() error{
			func() error {
				d, err := b.up(quickstart, fmt.Sprintf("bup%d", i), false)
				ups = append(ups, d)
				return err
			},
			func() error {
				d, err := b.up(quickstart, fmt.Sprintf("bcold%d", i), true)
				colds = append(colds, d)
				return err
			},
			func() error {
				f, o, err := b.restore("bsrc", fmt.Sprintf("brs%d", i))
				fresh, over = append(fresh, f), append(over, o)
				return err
			},
		}
		if dc != nil {
			steps = append(steps, func() error {
				d, err := dc.up()
				docker = append(docker, d)
				return err
			})
		}
		if i%2 == 1 {
			for l, r := 0, len(steps)-1; l < r; l, r = l+1, r-1 {
				steps[l], steps[r] = steps[r], steps[l]
			}
		}
		for _, s := range steps {
			if err := s(); err != nil {
				return err
			}
		}
		fmt.Printf("run %d: up %s, cold %s, restore into a new namespace %s, over itself %s", i+1,
			ups[i].Round(time.Millisecond), colds[i].Round(time.Millisecond), fresh[i].Round(time.Millisecond), over[i].Round(time.Millisecond))
		if dc != nil {
			fmt.Printf(", docker-compose up %s", docker[i].Round(time.Millisecond))
		}
		fmt.Println()
	}
	fmt.Printf("%-50s %10s\n", "variant (median of runs)", "time")
	fmt.Printf("%-50s %10s\n", "quickstart: up from nothing (templates on)", benchstat.Median(ups).Round(time.Millisecond))
	fmt.Printf("%-50s %10s\n", "quickstart: up from nothing, cold (templates off)", benchstat.Median(colds).Round(time.Millisecond))
	fmt.Printf("%-50s %10s\n", "quickstart: restore into a new namespace", benchstat.Median(fresh).Round(time.Millisecond))
	fmt.Printf("%-50s %10s\n", "quickstart: restore over the running namespace", benchstat.Median(over).Round(time.Millisecond))
	if dc != nil {
		fmt.Printf("%-50s %10s\n", "docker-compose up -d, to web answering", benchstat.Median(docker).Round(time.Millisecond))
	}
	fmt.Printf("restore_new_vs_up=%s restore_over_vs_up=%s restore_new_vs_cold_up=%s", benchstat.Ratio(fresh, ups), benchstat.Ratio(over, ups), benchstat.Ratio(fresh, colds))
	if dc != nil {
		fmt.Printf(" restore_new_vs_docker_compose=%s up_vs_docker_compose=%s", benchstat.Ratio(fresh, docker), benchstat.Ratio(ups, docker))
	}
	fmt.Println()

	return runCloudInit(b, debian, cloudInit)
}

// runCloudInit measures the Debian cloud-init example, when debian is set.
func runCloudInit(b *bench, debian, cloudInit string) error {
	if debian == "" {
		return nil
	}
	b.vars = []string{"debian_image_dir=" + debian}
	if err := b.saved(cloudInit, "bcisrc"); err != nil {
		return err
	}
	var ciUp, ciRestore []time.Duration // one up: about a minute
	d, err := b.up(cloudInit, "bciup", false)
	if err != nil {
		return err
	}
	ciUp = append(ciUp, d)
	for i := range 3 {
		f, _, err := b.restore("bcisrc", fmt.Sprintf("bcirs%d", i))
		if err != nil {
			return err
		}
		ciRestore = append(ciRestore, f)
	}
	med := benchstat.Median(ciRestore)
	fmt.Printf("cloud-init: up %s, restore into a new namespace %s (median of %d, %s..%s) cloud_init_restore_vs_up=%.4f\n",
		ciUp[0].Round(time.Millisecond), med.Round(time.Millisecond), len(ciRestore),
		slices.Min(ciRestore).Round(time.Millisecond), slices.Max(ciRestore).Round(time.Millisecond), float64(med)/float64(ciUp[0]))
	return nil
}

// compose is the quickstart's equivalent for docker-compose: busybox
// httpd serving a page, and a client fetching it every two seconds.
type compose struct {
	dir  string
	port int
}

const composeFile = `version: "3"
services:
  web:
    image: stack-bench-busybox
    entrypoint: ["/bin/busybox", "sh", "-c", "mkdir -p /www && echo 'hello from web' > /www/index.html && exec /bin/busybox httpd -f -p 80 -h /www"]
    ports: ["127.0.0.1:%d:80"]
  client:
    image: stack-bench-busybox
    depends_on: [web]
    entrypoint: ["/bin/busybox", "sh", "-c", "while true; do /bin/busybox wget -q -O - http://web/; sleep 2; done"]
`

func newCompose(dir string) (*compose, error) {
	if _, err := exec.LookPath("docker-compose"); err != nil {
		return nil, err
	}
	ctx := filepath.Join(dir, "image")
	if err := os.MkdirAll(ctx, 0o700); err != nil {
		return nil, err
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return nil, fmt.Errorf("a static busybox for the image: %w", err)
	}
	os.WriteFile(filepath.Join(ctx, "busybox"), bb, 0o755)
	os.WriteFile(filepath.Join(ctx, "Dockerfile"), []byte("FROM scratch\nCOPY busybox /bin/busybox\nCOPY busybox /bin/sh\n"), 0o600)
	if out, err := exec.Command("docker", "build", "-q", "-t", "stack-bench-busybox", ctx).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("docker build: %v: %s", err, out)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	c := &compose{dir: filepath.Join(dir, "compose"), port: port}
	os.MkdirAll(c.dir, 0o700)
	if err := os.WriteFile(filepath.Join(c.dir, "docker-compose.yml"), []byte(fmt.Sprintf(composeFile, port)), 0o600); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *compose) run(args ...string) error {
	cmd := exec.Command("docker-compose", append([]string{"-p", "stackbench"}, args...)...)
	cmd.Dir = c.dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("docker-compose %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// up times `docker-compose up -d` to the web container answering on its
// published port, and takes it down.
func (c *compose) up() (time.Duration, error) {
	t0 := time.Now()
	if err := c.run("up", "-d"); err != nil {
		return 0, err
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/", c.port)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Since(t0) > time.Minute {
			return 0, fmt.Errorf("docker-compose: web never answered: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	d := time.Since(t0)
	return d, c.run("down", "-t", "0")
}

func (c *compose) close() {
	c.run("down", "-t", "0")
	exec.Command("docker", "rmi", "-f", "stack-bench-busybox").Run()
}
