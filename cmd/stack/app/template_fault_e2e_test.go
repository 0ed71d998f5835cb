package app

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stackvm/stack/hypervisor/qemu/qmp"
	"github.com/stackvm/stack/hypervisor/qemu/templates"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/supervisor/client"
)

// privateTemplates points the cache at a directory of the test's own that
// shares everything of the user's cache (the guest image, kernels, the
// accelerator verdicts) but the templates, so that the test sees every
// template and making there is. It returns the templates directory.
func privateTemplates(t *testing.T) string {
	t.Helper()
	real := filenames.CacheRoot()
	mine := t.TempDir()
	entries, err := os.ReadDir(real)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for _, e := range entries {
		if filepath.Join(real, e.Name()) == filenames.TemplateCache(real) {
			continue
		}
		if err := os.Symlink(filepath.Join(real, e.Name()), filepath.Join(mine, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("STACK_CACHE_DIR", mine)
	t.Setenv("STACK_TEMPLATES", "")
	return filenames.TemplateCache(mine)
}

const shape304 = `vm "x" {
  memory_mb = 304
}
`

// supervisorLog is the namespace's supervisor's log, for failure reports.
func (c *cli) supervisorLog() string {
	b, _ := os.ReadFile(filepath.Join(filenames.NamespaceState(c.stateDir, c.ns), filenames.SupervisorLog))
	return string(b)
}

// waitReady waits until ps says vm is ready.
func waitReady(t *testing.T, c *cli, vm string) psEntry {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		v := c.ps()[vm]
		if v.State == "ready" {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never became ready: %+v\n%s\nsupervisor log:\n%s", vm, v, c.run("logs", vm).stdout, c.supervisorLog())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestKilledDuringTemplateSave: a supervisor killed while it saves a VM's
// boot template (the VM paused, its device state half written) leaves no
// template and no stuck VM: the next up's supervisor re-adopts the VM and
// lets it run on, the half-made template is cleared, and the next VM of
// that shape boots cold and makes a whole one, which the one after is
// restored from.
func TestKilledDuringTemplateSave(t *testing.T) {
	requireVMs(t)
	tplDir := privateTemplates(t)
	file := filepath.Join(t.TempDir(), "stack.hcl")
	writeFile(t, file, shape304)
	c := newCLI(t, fmt.Sprintf("tpk-%d", os.Getpid()))

	upDone := make(chan result, 1)
	go func() { upDone <- c.run("-f", file, "up", "--progress", "plain") }()

	// The supervisor's pid, once the up has started it.
	var supervisor int
	for deadline := time.Now().Add(time.Minute); supervisor == 0; {
		if sv, err := client.Dial(context.Background(), filenames.RuntimeRoot(), c.stateDir, c.ns); err == nil {
			if pong, err := sv.Ping(context.Background()); err == nil {
				supervisor = pong.PID
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no supervisor started")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The save begins with the device state file of the making: kill the
	// supervisor then.
	var making string
	for deadline := time.Now().Add(2 * time.Minute); making == ""; {
		m, _ := filepath.Glob(filepath.Join(tplDir, ".making-*", templates.StateFile))
		if len(m) > 0 {
			making = filepath.Dir(m[0])
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no template was being made")
		}
		time.Sleep(200 * time.Microsecond)
	}
	if err := syscall.Kill(supervisor, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for syscall.Kill(supervisor, 0) == nil {
		time.Sleep(5 * time.Millisecond)
	}
	<-upDone // it lost its supervisor; whatever it said, the VM is what counts

	// The kill came during the save: the VM is paused (or its state save
	// finishing), and no template was committed.
	qc, err := qmp.Dial(context.Background(), filepath.Join(filenames.VMRuntime(filenames.RuntimeRoot(), c.ns, "x"), filenames.QMPSocket))
	if err != nil {
		t.Fatal(err)
	}
	st, err := qc.QueryStatus(context.Background())
	qc.Close()
	if err != nil {
		t.Fatal(err)
	}
	if st.Status != "paused" && st.Status != "postmigrate" && st.Status != "finish-migrate" {
		t.Fatalf("the supervisor was killed after the save: the VM is %s", st.Status)
	}
	if tpl := templateOf(t, c, 304); tpl != nil {
		t.Fatalf("a template was committed by a killed save: %+v", tpl)
	}

	// The next up re-adopts the VM, which runs on as itself.
	c.mustRun("-f", file, "up", "--progress", "plain")
	v := waitReady(t, c, "x")
	if out := c.mustRun("exec", "x", "--", "hostname").stdout; strings.TrimSpace(out) != "x" {
		t.Errorf("hostname after re-adoption: %q", out)
	}
	if v.Boot != "cold" {
		t.Errorf("the VM that made the template: boot %q", v.Boot)
	}
	if _, err := os.Stat(making); !os.IsNotExist(err) {
		t.Errorf("the half-made template is still there: %v", err)
	}

	// The shape has no template: the next VM boots cold and makes one, the
	// one after is restored from it.
	c.mustRun("down")
	c.mustRun("-f", file, "up", "--progress", "plain")
	if v := waitReady(t, c, "x"); v.Boot != "cold" {
		t.Errorf("after the killed save: boot %q, want cold", v.Boot)
	}
	waitTemplate(t, c, 304)
	c.mustRun("down")
	c.mustRun("-f", file, "up", "--progress", "plain")
	if v := waitReady(t, c, "x"); v.Boot != "template" {
		t.Errorf("with the template made again: boot %q", v.Boot)
	}
}

// waitTemplate waits until the cache has a template of memMB's shape (it
// is committed just after the VM that makes it goes on).
func waitTemplate(t *testing.T, c *cli, memMB int) *templateEntry {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		if tpl := templateOf(t, c, memMB); tpl != nil {
			return tpl
		}
		if time.Now().After(deadline) {
			t.Fatalf("no template of the %d MiB shape:\n%s", memMB, c.mustRun("cache", "ls").stdout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestConcurrentUpsOfOneShape: two namespaces brought up at once with VMs
// of one shape that has no template yet make it once: one VM makes it,
// the other boots cold without (never reading a half-made one), both come
// up, and a third VM is restored from the one template.
func TestConcurrentUpsOfOneShape(t *testing.T) {
	requireVMs(t)
	privateTemplates(t)
	file := filepath.Join(t.TempDir(), "stack.hcl")
	writeFile(t, file, shape304)
	var clis []*cli
	for _, n := range []string{"a", "b", "c"} {
		c := newCLI(t, fmt.Sprintf("tpc%s-%d", n, os.Getpid()))
		if len(clis) > 0 {
			c.stateDir = clis[0].stateDir
		}
		clis = append(clis, c)
	}

	var wg sync.WaitGroup
	results := make([]result, 2)
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = clis[i].run("-f", file, "up", "--progress", "plain")
		}()
	}
	wg.Wait()
	for i, r := range results {
		if r.code != 0 {
			t.Fatalf("up %d: %+v", i, r)
		}
		if v := waitReady(t, clis[i], "x"); v.Boot != "cold" {
			t.Errorf("up %d: boot %q, want cold (there was no whole template)", i, v.Boot)
		}
	}
	waitTemplate(t, clis[0], 304)
	list, err := templates.Open(filenames.TemplateCache(filenames.CacheRoot())).List()
	if err != nil || len(list) != 1 {
		t.Fatalf("templates after two concurrent makers: %v, %v", list, err)
	}
	clis[2].mustRun("-f", file, "up", "--progress", "plain")
	if v := waitReady(t, clis[2], "x"); v.Boot != "template" {
		t.Errorf("third up: boot %q, want template", v.Boot)
	}
}
