package stackfile

import (
	"strings"
	"testing"
)

// TestAccelDefault: accel is the VM's attribute, else $STACK_ACCEL, else
// auto; a bad STACK_ACCEL is one error, whatever the number of VMs.
func TestAccelDefault(t *testing.T) {
	dir := writeFiles(t, map[string]string{"stack.hcl": `
vm "a" {}
vm "b" {
  accel = "kvm"
}
vm "c" {
  count = 2
}
`})
	accels := func(st *Stack) string {
		var out []string
		for _, vm := range st.VMs {
			out = append(out, vm.Name+"="+vm.Accel)
		}
		return strings.Join(out, " ")
	}
	if got := accels(mustLoad(t, Options{Dir: dir})); got != "a=auto b=kvm c-0=auto c-1=auto" {
		t.Errorf("without STACK_ACCEL: %s", got)
	}
	if got := accels(mustLoad(t, Options{Dir: dir, Environ: []string{"STACK_ACCEL=tcg"}})); got != "a=tcg b=kvm c-0=tcg c-1=tcg" {
		t.Errorf("with STACK_ACCEL=tcg: %s", got)
	}
	if got := accels(mustLoad(t, Options{Dir: dir, Environ: []string{"STACK_ACCEL="}})); got != "a=auto b=kvm c-0=auto c-1=auto" {
		t.Errorf("with STACK_ACCEL empty: %s", got)
	}
	d := loadErr(t, Options{Dir: dir, Environ: []string{"STACK_ACCEL=fast"}})
	if d.Summary != "Invalid STACK_ACCEL" || !strings.Contains(d.Detail, `"fast"`) {
		t.Errorf("bad STACK_ACCEL: %s: %s", d.Summary, d.Detail)
	}
}

// TestUnsupportedHypervisor: a VMM this build has no driver for is an
// error at its line, not QEMU in disguise.
func TestUnsupportedHypervisor(t *testing.T) {
	dir := writeFiles(t, map[string]string{"stack.hcl": "vm \"web\" {\n  hypervisor = \"firecracker\"\n}\n"})
	d := loadErr(t, Options{Dir: dir})
	want := `hypervisor "firecracker" is not supported by this build (supported: auto, qemu).`
	if d.Detail != want || d.Subject == nil || d.Subject.Start.Line != 2 || !strings.HasSuffix(d.Subject.Filename, "stack.hcl") {
		t.Errorf("got %s at %v, want %q at stack.hcl:2", d.Detail, d.Subject, want)
	}
}
