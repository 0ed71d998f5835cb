package app

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stackvm/stack/cloudinit"
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

	layoutDir := filepath.Join(t.TempDir(), "config-images")
	r = run(t, examples, "-f", "quickstart.hcl", "--state-dir", stateDir, "export", "--config-image", "registry.example/qs-config",
		"--write-config-images", layoutDir)
	if r.code != 0 || strings.Contains(r.stdout, "kind: ConfigMap") || !strings.Contains(r.stdout, "image: registry.example/qs-config:web") {
		t.Fatalf("export --config-image: code %d, stdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	var index struct {
		Manifests []struct {
			MediaType   string            `json:"mediaType"`
			Annotations map[string]string `json:"annotations"`
		} `json:"manifests"`
	}
	if err := json.Unmarshal(mustRead(t, filepath.Join(layoutDir, "index.json")), &index); err != nil {
		t.Fatal(err)
	}
	var tags []string
	for _, m := range index.Manifests {
		tags = append(tags, m.Annotations["org.opencontainers.image.ref.name"])
		if m.MediaType != "application/vnd.oci.image.manifest.v1+json" {
			t.Errorf("image %v: media type %s, want an OCI manifest", m.Annotations, m.MediaType)
		}
	}
	if strings.Join(tags, ",") != "client,web" {
		t.Errorf("the config image layout has tags %v, want client and web", tags)
	}

	if r := run(t, examples, "-f", "quickstart.hcl", "--state-dir", stateDir, "export", "--format", "swarm"); r.code == 0 || !strings.Contains(r.stderr, "swarm") {
		t.Errorf("an unknown format: code %d, stderr %q", r.code, r.stderr)
	}
}

// TestExportNomad: `export --format nomad -o DIR` writes the job (the
// export package's golden file) and each cloud-init VM's seed as an ISO
// that the job's artifact names.
func TestExportNomad(t *testing.T) {
	examples, err := filepath.Abs("../../../examples/stacks")
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("../../../export/testdata/nomad/cloud-init.json")
	if err != nil {
		t.Fatal(err)
	}
	images := t.TempDir()
	for _, f := range []string{"vmlinuz", "initrd.img", "debian-12.raw"} {
		if err := os.WriteFile(filepath.Join(images, f), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "job")
	r := run(t, examples, "-f", "cloud-init.hcl", "--var", "debian_image_dir="+images, "--state-dir", t.TempDir(),
		"export", "--format", "nomad", "-o", out)
	if r.code != 0 {
		t.Fatalf("export: code %d, stderr:\n%s", r.code, r.stderr)
	}
	if got := mustRead(t, filepath.Join(out, "cloud-init.nomad.json")); string(got) != string(want) {
		t.Errorf("the job differs from the golden file:\n%s", got)
	}
	if !strings.Contains(string(want), "debian-seed.iso") {
		t.Errorf("the job names no debian-seed.iso artifact")
	}
	label, files, err := cloudinit.ReadISO(filepath.Join(out, "debian-seed.iso"))
	if err != nil || label != cloudinit.VolumeID || !strings.HasPrefix(string(files[cloudinit.FileUserData]), "#cloud-config") {
		t.Errorf("seed ISO: label %q, files %v (%v)", label, len(files), err)
	}
}
