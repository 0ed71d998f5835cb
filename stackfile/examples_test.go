package stackfile

import (
	"bytes"
	"fmt"
	"os"

	"path/filepath"
	"strings"
	"testing"
)

// TestExamples loads every shipped example on its own and requires zero
// diagnostics, so the examples never rot.
func TestExamples(t *testing.T) {
	files, err := filepath.Glob("../examples/stacks/*.hcl")
	if err != nil || len(files) < 4 {
		t.Fatalf("want at least 4 examples, got %d (%v)", len(files), err)
	}
	// The cloud-init example takes the Debian image directory as a
	// variable (the Makefile passes the real one); the loader only checks
	// that the files exist, so empty stand-ins do here.
	images := writeFiles(t, map[string]string{"vmlinuz": "", "initrd.img": "", "debian-12.raw": ""})
	env := []string{EnvPrefix + "debian_image_dir=" + images}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			st := mustLoad(t, Options{Dir: filepath.Dir(f), Files: []string{filepath.Base(f)}, Environ: env})
			if len(st.VMs) == 0 {
				t.Errorf("example defines no VMs")
			}
		})
	}
}

// TestQuickstart pins down what the quickstart promises.
func TestQuickstart(t *testing.T) {
	st := mustLoad(t, Options{Dir: "../examples/stacks", Files: []string{"quickstart.hcl"}})
	if len(st.Networks) != 1 || st.Networks[0].Name != "lan" || len(st.VMs) != 2 {
		t.Fatalf("want network lan and two VMs, got %d networks %d VMs", len(st.Networks), len(st.VMs))
	}
	client, web := st.VMs[0], st.VMs[1]
	if client.Name != "client" || web.Name != "web" {
		t.Fatalf("VMs %s, %s", client.Name, web.Name)
	}
	if web.Ready.TCP != 80 || !strings.Contains(strings.Join(web.Command, " "), "httpd") {
		t.Errorf("web: ready %+v command %q", web.Ready, web.Command)
	}
	if len(client.DependsOn) != 1 || client.DependsOn[0] != "vm.web" || !strings.Contains(strings.Join(client.Command, " "), "wget") {
		t.Errorf("client: depends_on %q command %q", client.DependsOn, client.Command)
	}
	for _, vm := range st.VMs {
		if vm.Kernel != "" || vm.Initramfs != "" || vm.Mode() != ModeInitramfs {
			t.Errorf("%s must use the built-in guest image", vm.Name)
		}
	}
}

// FuzzLoad writes arbitrary input as stack.hcl and loads it: Load must
// never panic, and must return a stack exactly when it reports no error.
func FuzzLoad(f *testing.F) {
	var seeds []string
	for _, pat := range []string{"../examples/stacks/*.hcl", "testdata/*/*.hcl"} {
		m, _ := filepath.Glob(pat)
		seeds = append(seeds, m...)
	}
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		dir := t.TempDir()
		// Files some seeds refer to, so fuzzing explores past the stat.
		if err := os.MkdirAll(filepath.Join(dir, "shared"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "stack.hcl"), src, 0o644); err != nil {
			t.Fatal(err)
		}
		if msg := fuzzOne(dir, src); msg != "" {
			t.Fatal(msg)
		}
	})
}

// fuzzOne loads, renders and formats one input; it returns what is wrong.
func fuzzOne(dir string, src []byte) string {
	st, srcs, diags := Load(Options{Dir: dir, Namespace: "fuzz", Environ: []string{}})
	if srcs == nil {
		return "nil Sources"
	}
	if (st == nil) != diags.HasErrors() {
		return fmt.Sprintf("stack %v with errors %v", st != nil, diags.HasErrors())
	}
	var sb strings.Builder
	if err := srcs.WriteDiagnostics(&sb, diags, false, 80); err != nil {
		return fmt.Sprintf("render diagnostics: %v", err)
	}
	if _, fd := Format(src, "stack.hcl"); fd.HasErrors() && !diags.HasErrors() {
		return fmt.Sprintf("Format rejects input that Load accepts: %s", fd.Error())
	}
	return ""
}

// FuzzFormat checks that Format never panics, that what it returns parses,
// and that formatting is idempotent.
func FuzzFormat(f *testing.F) {
	for _, pat := range []string{"../examples/stacks/*.hcl", "testdata/*/*.hcl"} {
		m, _ := filepath.Glob(pat)
		for _, s := range m {
			b, err := os.ReadFile(s)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		out, diags := Format(src, "stack.hcl")
		if diags.HasErrors() {
			if out != nil {
				t.Fatalf("output despite syntax errors: %q", out)
			}
			return
		}
		again, diags := Format(out, "stack.hcl")
		if diags.HasErrors() {
			t.Fatalf("formatted output does not parse: %s\n%s", diags.Error(), out)
		}
		if !bytes.Equal(again, out) {
			t.Fatalf("Format is not idempotent:\n%q\n%q", out, again)
		}
	})
}
