package app

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stackvm/stack/guestimage"
	"github.com/stackvm/stack/hypervisor/qemu"
)

const fallbackLine = "KVM is present but cannot run guests here"

// TestAccelChoice boots one VM under accel "auto", under STACK_ACCEL=kvm
// and with accel = "tcg", on this host whatever its KVM. The expectations
// follow the driver's verdict on this host's KVM: where KVM runs guests,
// auto and kvm run under it; where it does not (kvm-pvm, or no /dev/kvm),
// auto runs under TCG and says why once when a KVM device is there, and
// STACK_ACCEL=kvm fails up with the probe's reason.
func TestAccelChoice(t *testing.T) {
	requireVMs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	img, err := guestimage.Ensure(ctx, guestimage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	v, err := qemu.New(qemu.Options{}).KVM(ctx, qemu.MachineMicrovm, img.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("KVM verdict on this host: %+v", v)
	dir := t.TempDir()
	file := filepath.Join(dir, "stack.hcl")
	writeFile(t, file, oneVM)
	c := newCLI(t, fmt.Sprintf("accel-%d", os.Getpid()))

	t.Setenv("STACK_ACCEL", "")
	r := c.mustRun("-f", file, "up", "--progress", "plain")
	want, warnings := "kvm", 0
	if !v.Usable {
		want = "tcg"
		if v.Present {
			warnings = 1
		}
	}
	if n := strings.Count(r.stderr, fallbackLine); n != warnings {
		t.Errorf("auto: the fallback was said %d times, want %d:\n%s", n, warnings, r.stderr)
	}
	if warnings == 1 && !strings.Contains(r.stderr, "("+v.Reason+"); using TCG") {
		t.Errorf("auto: the fallback does not give the probe's reason %q:\n%s", v.Reason, r.stderr)
	}
	if got := c.ps()["solo"].Accel; got != want {
		t.Errorf("auto: ps --json says accel %q, want %q", got, want)
	}
	c.mustRun("down")

	t.Setenv("STACK_ACCEL", "kvm")
	r = c.run("-f", file, "up", "--progress", "plain")
	switch {
	case v.Usable && (r.code != 0 || c.ps()["solo"].Accel != "kvm"):
		t.Errorf("STACK_ACCEL=kvm where KVM runs guests: exit %d, %+v\n%s", r.code, c.ps()["solo"], r.stderr)
	case !v.Usable && (r.code != 1 || !strings.Contains(r.stderr, v.Reason) || !strings.Contains(r.stderr, `accel = "kvm"`)):
		t.Errorf("STACK_ACCEL=kvm where KVM does not run guests: exit %d, want 1 with the probe's reason %q:\n%s", r.code, v.Reason, r.stderr)
	}
	c.mustRun("down")

	// The attribute wins over the environment.
	writeFile(t, file, strings.Replace(oneVM, `vm "solo" {`, "vm \"solo\" {\n  accel = \"tcg\"", 1))
	r = c.mustRun("-f", file, "up", "--progress", "plain")
	if got := c.ps()["solo"].Accel; got != "tcg" || strings.Contains(r.stderr, fallbackLine) {
		t.Errorf(`accel = "tcg": ps says %q; output:%s`, got, r.stderr)
	}
}
