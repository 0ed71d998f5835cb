package app

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stackvm/stack"
	"github.com/stackvm/stack/hypervisor/proc"
	"github.com/stackvm/stack/planner"
	"github.com/stackvm/stack/state"
)

type result struct {
	code           int
	stdout, stderr string
}

func run(t *testing.T, dir string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	wd, _ := os.Getwd()
	if err := os.Chdir(dir); err != nil {
		t.Fatal(err)
	}
	defer os.Chdir(wd)
	code := Main(context.Background(), Streams{In: strings.NewReader(""), Out: &out, Err: &errb}, args)
	return result{code, out.String(), errb.String()}
}

const stackHCL = `stack "demo" {}

variable "replicas" {
  type    = number
  default = 2
}

network "lan" {
  subnet = "10.42.0.0/24"
}

vm "web" {
  count     = var.replicas
  memory_mb = 256
  command   = ["httpd", "-f", "-p", "80"]
  network "lan" {}
}
`

func writeStack(t *testing.T, content string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "stack.hcl"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestValidate(t *testing.T) {
	dir := writeStack(t, stackHCL)
	if r := run(t, dir, "validate"); r.code != 0 || !strings.Contains(r.stdout, "valid") {
		t.Fatalf("valid file: %+v", r)
	}
	broken := strings.Replace(stackHCL, "memory_mb = 256", "memory_mb = 256\n  memroy = 3", 1)
	dir = writeStack(t, broken)
	r := run(t, dir, "validate")
	if r.code != 1 || !strings.Contains(r.stderr, "line 15") || !strings.Contains(r.stderr, "memroy = 3") {
		t.Fatalf("broken file: code %d, stderr:\n%s", r.code, r.stderr)
	}
	r = run(t, dir, "validate", "--json")
	var v struct {
		Valid       bool             `json:"valid"`
		Diagnostics []jsonDiagnostic `json:"diagnostics"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatalf("validate --json output: %v\n%s", err, r.stdout)
	}
	if r.code != 1 || v.Valid || len(v.Diagnostics) == 0 {
		t.Fatalf("validate --json: code %d %+v", r.code, v)
	}
	d := v.Diagnostics[0]
	if d.Severity != "error" || d.Line != 15 || d.Column != 3 || filepath.Base(d.Filename) != "stack.hcl" {
		t.Fatalf("diagnostic %+v, want error at stack.hcl:15:3", d)
	}
}

func TestFmt(t *testing.T) {
	ugly := "network \"lan\" {\nsubnet=\"10.0.0.0/24\"\n    dhcp = true\n}\n"
	dir := writeStack(t, ugly)
	r := run(t, dir, "fmt", "--check")
	if r.code != 1 || strings.TrimSpace(r.stdout) != "stack.hcl" {
		t.Fatalf("fmt --check on unformatted file: %+v", r)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "stack.hcl")); string(b) != ugly {
		t.Fatal("fmt --check changed the file")
	}
	if r := run(t, dir, "fmt"); r.code != 0 {
		t.Fatalf("fmt: %+v", r)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "stack.hcl"))
	if want := "network \"lan\" {\n  subnet = \"10.0.0.0/24\"\n  dhcp   = true\n}\n"; string(b) != want {
		t.Fatalf("formatted:\n%s\nwant:\n%s", b, want)
	}
	if r := run(t, dir, "fmt", "--check"); r.code != 0 || r.stdout != "" {
		t.Fatalf("fmt --check on formatted file: %+v", r)
	}
	bad := "network \"lan\" {\n  subnet = \n"
	dir = writeStack(t, bad)
	r = run(t, dir, "fmt")
	if r.code != 1 || !strings.Contains(r.stderr, "stack.hcl") {
		t.Fatalf("fmt of a syntax error: %+v", r)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "stack.hcl")); string(b) != bad {
		t.Fatal("fmt rewrote a file with a syntax error")
	}
}

type jsonPlan struct {
	Actions []struct {
		Address string `json:"address"`
		Action  string `json:"action"`
		Changes []struct {
			Attribute         string          `json:"attribute"`
			Old               json.RawMessage `json:"old"`
			New               json.RawMessage `json:"new"`
			ForcesReplacement bool            `json:"forces_replacement"`
		} `json:"changes"`
	} `json:"actions"`
}

func planJSON(t *testing.T, dir string, args ...string) map[string]string {
	t.Helper()
	r := run(t, dir, append([]string{"plan", "--json"}, args...)...)
	if r.code != 0 {
		t.Fatalf("plan --json: %+v", r)
	}
	var p jsonPlan
	if err := json.Unmarshal([]byte(r.stdout), &p); err != nil {
		t.Fatalf("plan --json output: %v", err)
	}
	out := map[string]string{}
	for _, a := range p.Actions {
		out[a.Address] = a.Action
	}
	return out
}

// applyPlan records a plan in the state dir as the engine does after a
// successful `up`, so that plans against existing state can be tested
// without booting.
func applyPlan(t *testing.T, dir, stateDir string) {
	t.Helper()
	p, diags := stack.Load(stack.Options{Dir: dir, StateDir: stateDir})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	plan, st, err := p.Plan(context.Background(), stack.PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range plan.Order() {
		plan.Record(st, a)
	}
	// Stand in for the VMM with a process that is certainly alive: this
	// test binary. Observation then sees every VM running.
	start, err := proc.StartTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for _, vm := range st.VMs {
		vm.Status = "ready"
		vm.Process = &state.Process{Driver: "qemu", PID: os.Getpid(), StartTime: start}
	}
	if err := p.Store().Write(st); err != nil {
		t.Fatal(err)
	}
}

func TestPlanAgainstStateDir(t *testing.T) {
	dir := writeStack(t, stackHCL)
	stateDir := t.TempDir()
	sd := "--state-dir=" + stateDir

	got := planJSON(t, dir, sd)
	want := map[string]string{"network.lan": "create", "vm.web[0]": "create", "vm.web[1]": "create"}
	assertActions(t, "new", got, want)
	if r := run(t, dir, "plan", sd, "--detailed-exitcode"); r.code != 2 || !strings.Contains(r.stdout, "Plan: 3 to create, 0 to update, 0 to replace, 0 to delete.") {
		t.Fatalf("plan --detailed-exitcode with changes: %+v", r)
	}

	applyPlan(t, dir, stateDir)
	got = planJSON(t, dir, sd)
	assertActions(t, "unchanged", got, map[string]string{"network.lan": "no-op", "vm.web[0]": "no-op", "vm.web[1]": "no-op"})
	if r := run(t, dir, "plan", sd, "--detailed-exitcode"); r.code != 0 || !strings.Contains(r.stdout, "No changes.") {
		t.Fatalf("plan --detailed-exitcode without changes: %+v", r)
	}

	// Edited: only the VMs whose attribute changed, with the attribute.
	edited := writeStack(t, strings.Replace(stackHCL, "memory_mb = 256", "memory_mb = 512", 1))
	os.WriteFile(filepath.Join(dir, "stack.hcl"), mustRead(t, filepath.Join(edited, "stack.hcl")), 0o644)
	r := run(t, dir, "plan", sd)
	if r.code != 0 || !strings.Contains(r.stdout, "~ memory_mb = 256 -> 512 # forces replacement") || !strings.Contains(r.stdout, "Plan: 0 to create, 0 to update, 2 to replace, 0 to delete.") {
		t.Fatalf("edited: %+v", r)
	}
	os.WriteFile(filepath.Join(dir, "stack.hcl"), []byte(stackHCL), 0o644)

	// Grown and shrunk: existing instances untouched.
	assertActions(t, "grown", planJSON(t, dir, sd, "--var", "replicas=3"),
		map[string]string{"network.lan": "no-op", "vm.web[0]": "no-op", "vm.web[1]": "no-op", "vm.web[2]": "create"})
	assertActions(t, "shrunk", planJSON(t, dir, sd, "--var", "replicas=1"),
		map[string]string{"network.lan": "no-op", "vm.web[0]": "no-op", "vm.web[1]": "delete"})

	// Drift: a recorded VM whose process is gone is re-created.
	p, _ := stack.Load(stack.Options{Dir: dir, StateDir: stateDir})
	st, _ := p.Store().Read()
	st.VMs["vm.web[1]"].Process.StartTime++ // same pid, another process: gone
	if err := p.Store().Write(st); err != nil {
		t.Fatal(err)
	}
	assertActions(t, "drift", planJSON(t, dir, sd),
		map[string]string{"network.lan": "no-op", "vm.web[0]": "no-op", "vm.web[1]": "replace"})
	if r := run(t, dir, "ls", "--json", sd); r.code != 0 || !strings.Contains(r.stdout, `"namespace": "demo"`) {
		t.Fatalf("ls --json: %+v", r)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func assertActions(t *testing.T, what string, got, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s is %q, want %q (plan: %v)", what, k, got[k], v, got)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%s: plan has %d actions, want %d: %v", what, len(got), len(want), got)
	}
}

func TestPlanOutSavesAFreshPlan(t *testing.T) {
	dir := writeStack(t, stackHCL)
	stateDir := t.TempDir()
	out := filepath.Join(t.TempDir(), "plan.json")
	if r := run(t, dir, "plan", "--state-dir", stateDir, "--out", out); r.code != 0 || !strings.Contains(r.stdout, "stack up --plan") {
		t.Fatalf("plan --out: %+v", r)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := stack.Load(stack.Options{Dir: dir, StateDir: stateDir})
	st, err := p.Store().Read()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := planner.LoadSaved(data, st, nil); err != nil {
		t.Fatalf("fresh saved plan refused: %v", err)
	}
	applyPlan(t, dir, stateDir) // the state moves on
	st, _ = p.Store().Read()
	if _, _, err := planner.LoadSaved(data, st, nil); err == nil {
		t.Fatal("stale saved plan accepted")
	}
}
