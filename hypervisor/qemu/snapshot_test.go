package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stackvm/stack/guestimage"
	"github.com/stackvm/stack/guestproto"
	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/hypervisor/console"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/internal/netaddr"
)

// tickingVM is a VM whose workload prints a counter every 100 ms.
func tickingVM(t *testing.T, name string, template bool) *hypervisor.Config {
	t.Helper()
	img, err := guestimage.Ensure(context.Background(), guestimage.Options{})
	if err != nil {
		t.Fatalf("build the guest image: %v", err)
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_DGRAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	vmEnd, hostEnd := os.NewFile(uintptr(fds[0]), "nic"), os.NewFile(uintptr(fds[1]), "switch")
	t.Cleanup(func() { vmEnd.Close(); hostEnd.Close() })
	mac := netaddr.MustParseMAC("52:54:00:00:5a:01")
	gc, _ := json.Marshal(guestproto.Config{
		Version: guestproto.Version, Hostname: name,
		NICs:    []guestproto.NIC{{MAC: mac, Address: netip.MustParsePrefix("10.7.1.2/24")}},
		Command: []string{"sh", "-c", `i=0; while :; do echo "tick $i"; i=$((i+1)); sleep 0.1; done`},
	})
	return &hypervisor.Config{
		Name: name, RunDir: shortRunDir(t), CPUs: 1, MemoryMB: 256,
		Kernel: img.Kernel, Initramfs: img.Initramfs, Machine: "microvm", Accel: "tcg",
		NICs:       []hypervisor.NIC{{MAC: mac, FD: vmEnd}},
		GuestAgent: true, GuestConfig: gc, Template: template,
	}
}

var tickRE = regexp.MustCompile(`tick (\d+)`)

// lastTick is the highest counter in a console log, or -1.
func lastTick(path string) int {
	b, _ := os.ReadFile(path)
	last := -1
	for _, m := range tickRE.FindAllSubmatch(b, -1) {
		n, _ := strconv.Atoi(string(m[1]))
		last = max(last, n)
	}
	return last
}

func waitTick(t *testing.T, path string, above int) int {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if n := lastTick(path); n > above {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("no tick above %d; console:\n%s", above, consoleTail(path))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSnapshotSaveAndRestore saves a running VM (paused, saved, resumed:
// it goes on) and starts two VMs from the save: each goes on from the
// moment of the save without booting, and the save's files are the same
// bytes afterwards. A VM of another shape is refused, naming what differs.
// Both a cold-booted VM and one restored from a boot template (whose RAM
// is a private mapping of the template's file) are saved.
func TestSnapshotSaveAndRestore(t *testing.T) {
	needVMs(t)
	for _, c := range []struct{ template, flat bool }{{false, false}, {false, true}, {true, true}} {
		template, flat := c.template, c.flat
		t.Run(fmt.Sprintf("template=%v,flat=%v", template, flat), func(t *testing.T) {
			d := New(Options{Templates: t.TempDir(), TemplateShm: t.TempDir()})
			if template {
				// Make the template, so that the VM saved is a clone.
				runSnapshotVM(t, d, tickingVM(t, "maker", true), "")
			}
			src := tickingVM(t, "src", template)
			inst, log := runSnapshotVM(t, d, src, "")
			if template && inst.Boot().Kind != hypervisor.BootTemplate {
				t.Fatalf("the VM to save: boot %+v", inst.Boot())
			}
			ctx := context.Background()
			before := waitTick(t, log, 3)
			dir := t.TempDir()
			if err := inst.Pause(ctx); err != nil {
				t.Fatal(err)
			}
			saved, err := inst.Save(ctx, dir)
			if err != nil {
				t.Fatal(err)
			}
			at := lastTick(log)
			if err := inst.Resume(ctx); err != nil {
				t.Fatal(err)
			}
			t.Logf("saved at tick %d: %d MiB in %s", at, saved.Bytes>>20, saved.Took)
			if at < before {
				t.Fatalf("tick went back: %d after %d", at, before)
			}
			waitTick(t, log, at) // the saved VM goes on
			if flat {
				t0 := time.Now()
				if err := d.Flatten(ctx, dir); err != nil {
					t.Fatal(err)
				}
				mem, _ := fileSize(filepath.Join(dir, filenames.SnapshotVMMem))
				state, _ := fileSize(filepath.Join(dir, filenames.SnapshotVMState))
				t.Logf("flattened in %s: memory file %d MiB (%d MiB allocated), device state %d KiB", time.Since(t0), mem>>20, allocated(t, filepath.Join(dir, filenames.SnapshotVMMem))>>20, state>>10)
			}
			stateSum := fileSum(t, filepath.Join(dir, filenames.SnapshotVMState))

			for _, name := range []string{"copy-a", "copy-b"} {
				cfg := tickingVM(t, "src", template)
				cfg.Snapshot = dir
				t0 := time.Now()
				clone, clog := runSnapshotVM(t, d, cfg, name)
				t.Logf("%s: restored (paused) in %s, running %s after start", name, clone.Boot().Took, time.Since(t0))
				if clone.Boot().Kind != hypervisor.BootSnapshot {
					t.Errorf("%s: boot %+v", name, clone.Boot())
				}
				first := waitTick(t, clog, -1)
				if first < at || first > at+3 {
					t.Errorf("%s: first tick %d, saved at %d: it did not go on from the save", name, first, at)
				}
				if b, _ := os.ReadFile(clog); regexp.MustCompile(`stack-init started`).Match(b) {
					t.Errorf("%s: booted again:\n%s", name, b)
				}
			}
			if fileSum(t, filepath.Join(dir, filenames.SnapshotVMState)) != stateSum {
				t.Error("restoring changed the save")
			}

			other := tickingVM(t, "src", template)
			other.MemoryMB = 320
			other.Snapshot = dir
			_, err = d.Start(ctx, other)
			if !errors.Is(err, hypervisor.ErrSnapshotShape) || !regexp.MustCompile(`"256" when saved, "320" now`).MatchString(err.Error()) {
				t.Errorf("a VM of another shape: %v", err)
			}
		})
	}
}

// runSnapshotVM starts cfg with a console relay and plays the supervisor's
// part for a parked guest; a VM started from a snapshot is resumed. It
// returns the instance and its console log, named logName or cfg's name.
func runSnapshotVM(t *testing.T, d *Driver, cfg *hypervisor.Config, logName string) (hypervisor.Instance, string) {
	t.Helper()
	if logName == "" {
		logName = cfg.Name
	}
	logPath := filepath.Join(t.TempDir(), logName+".log")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var relay *console.Relay
	d.opts.BeforeBoot = withRelay(t, logPath, &relay)
	inst, err := d.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inst.Kill(); inst.Wait(context.Background()); inst.Close() })
	if cfg.Snapshot != "" {
		if err := inst.Resume(ctx); err != nil {
			t.Fatal(err)
		}
		return inst, logPath
	}
	g := inst.Guest()
	if err := g.Send(ctx, []byte(`{"type":"hello"}`)); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case line, ok := <-g.Events():
			if !ok {
				t.Fatalf("%s: guest channel closed; console:\n%s", cfg.Name, consoleTail(logPath))
			}
			var m guestproto.Message
			json.Unmarshal(line, &m)
			if m.Status != nil && m.Status.Parked {
				if err := inst.Parked(ctx); err != nil {
					t.Fatal(err)
				}
				body, _ := json.Marshal(guestproto.Unpark{Time: time.Now().UnixNano(), Entropy: []byte("e"),
					Restored: inst.Boot().Kind.Restored()})
				msg, _ := json.Marshal(guestproto.Message{Type: guestproto.TypeUnpark, Body: body})
				if err := g.Send(ctx, msg); err != nil {
					t.Fatal(err)
				}
			}
			if m.Type == guestproto.TypeReady || (m.Status != nil && m.Status.Ready) {
				return inst, logPath
			}
		case <-ctx.Done():
			t.Fatalf("%s: not ready; console:\n%s", cfg.Name, consoleTail(logPath))
		}
	}
}

// allocated is the disk space a file takes (holes take none).
func allocated(t *testing.T, path string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}
