package stackfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
)

// A key stack owns, set in user_data, is a warning at its line of the
// heredoc; the stack still loads.
func TestUserDataOwnedKeyWarning(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"vmlinuz", "initrd.img", "disk.raw"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	src := `vm "db" {
  kernel    = "vmlinuz"
  initramfs = "initrd.img"
  root_disk = "disk.raw"
  cloud_init {
    user_data = <<-EOT
      #cloud-config
      packages: [curl]
      hostname: elsewhere
    EOT
  }
}
`
	if err := os.WriteFile(filepath.Join(dir, "stack.hcl"), []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	st, sources, diags := Load(Options{Dir: dir, Namespace: "test", Environ: []string{}})
	if diags.HasErrors() || st == nil {
		t.Fatalf("load failed:\n%s", renderDiags(sources, diags))
	}
	var warns hcl.Diagnostics
	for _, d := range diags {
		if d.Severity == hcl.DiagWarning {
			warns = append(warns, d)
		}
	}
	if len(warns) != 1 {
		t.Fatalf("want one warning, got:\n%s", renderDiags(sources, diags))
	}
	w := warns[0]
	if w.Subject == nil || w.Subject.Start.Line != 9 || w.Subject.Start.Column != 7 || !strings.Contains(w.Detail, `hostname is set by stack to "db"`) {
		t.Errorf("warning at %v: %s", w.Subject, w.Detail)
	}
	if out := renderDiags(sources, warns); !strings.Contains(out, "hostname: elsewhere") {
		t.Errorf("snippet lacks the user's line:\n%s", out)
	}
}

// cloud_init { strict } is a bool, false when left out; a value that is not
// a bool is an error at its line.
func TestCloudInitStrict(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"vmlinuz", "disk.raw"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	load := func(block string) (*Stack, string, hcl.Diagnostics) {
		t.Helper()
		src := "vm \"a\" {\n  kernel    = \"vmlinuz\"\n  root_disk = \"disk.raw\"\n" + block + "}\n"
		if err := os.WriteFile(filepath.Join(dir, "stack.hcl"), []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
		st, sources, diags := Load(Options{Dir: dir, Namespace: "test", Environ: []string{}})
		return st, renderDiags(sources, diags), diags
	}
	for block, want := range map[string]bool{"": false, "  cloud_init {}\n": false, "  cloud_init {\n    strict = true\n  }\n": true} {
		st, out, diags := load(block)
		if diags.HasErrors() {
			t.Fatalf("%q:\n%s", block, out)
		}
		if got := st.VMs[0].CloudInit != nil && st.VMs[0].CloudInit.Strict; got != want {
			t.Errorf("%q: strict = %v", block, got)
		}
	}
	_, out, diags := load("  cloud_init {\n    strict = \"very\"\n  }\n")
	if !diags.HasErrors() || !strings.Contains(out, "stack.hcl line 5") {
		t.Errorf("a strict that is not a bool:\n%s", out)
	}
}
