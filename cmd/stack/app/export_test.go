package app

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestExport: `stack export` writes the export package's manifests (its
// golden file for the quickstart) to stdout or one file per object, and
// every warning to stderr.
func TestExport(t *testing.T) {
	examples, err := filepath.Abs("../../../examples/stacks")
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("../../../export/testdata/kubevirt/quickstart.yaml")
	if err != nil {
		t.Fatal(err)
	}
	warnings, err := os.ReadFile("../../../export/testdata/kubevirt/quickstart.warnings")
	if err != nil {
		t.Fatal(err)
	}
	stateDir := t.TempDir()
	r := run(t, examples, "-f", "quickstart.hcl", "--state-dir", stateDir, "export")
	if r.code != 0 || r.stdout != string(want) {
		t.Fatalf("export: code %d, stdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	for _, w := range strings.Split(strings.TrimSpace(string(warnings)), "\n") {
		if !strings.Contains(r.stderr, "warning: "+w+"\n") {
			t.Errorf("stderr lacks warning %q:\n%s", w, r.stderr)
		}
	}

	out := filepath.Join(t.TempDir(), "manifests")
	r = run(t, examples, "-f", "quickstart.hcl", "--state-dir", stateDir, "export", "--format", "kubevirt", "-o", out)
	if r.code != 0 || r.stdout != "" {
		t.Fatalf("export -o: code %d, stdout %q, stderr:\n%s", r.code, r.stdout, r.stderr)
	}
	files, err := filepath.Glob(filepath.Join(out, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var joined []string
	for _, name := range []string{"networkattachmentdefinition-lan", "configmap-client-stack-config", "virtualmachine-client",
		"configmap-web-stack-config", "virtualmachine-web"} {
		path := filepath.Join(out, name+".yaml")
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v (%v), want 0600", path, fi.Mode().Perm(), err)
		}
		joined = append(joined, string(data))
	}
	if len(files) != 5 || strings.Join(joined, "---\n") != string(want) {
		t.Errorf("-o wrote %d files %v, not the stream's objects", len(files), files)
	}

	if r := run(t, examples, "-f", "quickstart.hcl", "--state-dir", stateDir, "export", "--format", "swarm"); r.code == 0 || !strings.Contains(r.stderr, "swarm") {
		t.Errorf("an unknown format: code %d, stderr %q", r.code, r.stderr)
	}
}
