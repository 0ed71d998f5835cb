package stackfile

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
)

// writeFiles writes name -> content under a new temp dir and returns it.
func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func mustLoad(t *testing.T, opts Options) *Stack {
	t.Helper()
	if opts.Environ == nil {
		opts.Environ = []string{}
	}
	st, src, diags := Load(opts)
	if len(diags) > 0 {
		t.Fatalf("unexpected diagnostics:\n%s", renderDiags(src, diags))
	}
	return st
}

// loadErr loads opts and returns the one error diagnostic it must produce.
func loadErr(t *testing.T, opts Options) *hcl.Diagnostic {
	t.Helper()
	if opts.Environ == nil {
		opts.Environ = []string{}
	}
	st, src, diags := Load(opts)
	if len(diags) != 1 || !diags.HasErrors() {
		t.Fatalf("want exactly one error, got %d:\n%s", len(diags), renderDiags(src, diags))
	}
	if st != nil {
		t.Errorf("Load returned a stack along with an error")
	}
	return diags[0]
}

const precedenceStack = `
variable "x" {
  type    = string
  default = "default"
}

vm "a" {
  cmdline = var.x
}
`

func TestVariablePrecedence(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"stack.hcl":  precedenceStack,
		"one.vars":   `x = "file1"`,
		"two.vars":   `x = "file2"`,
		"other.vars": `# sets nothing`,
	})
	env := []string{"STACK_VAR_x=env", "STACK_VAR_undeclared=ignored", "PATH=/bin"}
	cases := []struct {
		name string
		opts Options
		want string
	}{
		{"default", Options{}, "default"},
		{"env beats default", Options{Environ: env}, "env"},
		{"var file beats env", Options{Environ: env, VarFiles: []string{"one.vars", "other.vars"}}, "file1"},
		{"later var file wins", Options{Environ: env, VarFiles: []string{"one.vars", "two.vars"}}, "file2"},
		{"--var beats var file", Options{Environ: env, VarFiles: []string{"two.vars"}, Vars: []string{"x=cli"}}, "cli"},
		{"later --var wins", Options{Vars: []string{"x=first", "x=second"}}, "second"},
		{"--var value with =", Options{Vars: []string{"x=a=b"}}, "a=b"},
		{"--var empty value", Options{Vars: []string{"x="}}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.opts.Dir = dir
			st := mustLoad(t, c.opts)
			if got := st.VMs[0].Cmdline; got != c.want {
				t.Errorf("var.x = %q, want %q", got, c.want)
			}
		})
	}
}

const typedStack = `
variable "n" {
  type = number
}

variable "l" {
  type    = list(string)
  default = []
}

variable "m" {
  type    = map(string)
  default = {}
}

variable "b" {
  type    = bool
  default = false
}

variable "s" {
  type    = string
  default = ""
}

variable "untyped" {
  default = ""
}

vm "a" {
  cpus    = var.n
  command = var.l
  env     = var.m
  restart = var.b ? "always" : "no"
  cmdline = "${var.s}|${var.untyped}"
}
`

// TestVarParsing checks that --var values are parsed per the variable's
// type: raw strings for string and untyped variables, HCL otherwise.
func TestVarParsing(t *testing.T) {
	dir := writeFiles(t, map[string]string{"stack.hcl": typedStack})
	st := mustLoad(t, Options{Dir: dir, Vars: []string{
		"n=3", `l=["a", "b c"]`, `m={ K = "v" }`, "b=true", `s="quoted" [x]`, "untyped=1 + 1",
	}})
	vm := st.VMs[0]
	if vm.CPUs != 3 {
		t.Errorf("cpus = %d, want 3", vm.CPUs)
	}
	if strings.Join(vm.Command, ",") != "a,b c" {
		t.Errorf("command = %q", vm.Command)
	}
	if vm.Env["K"] != "v" || len(vm.Env) != 1 {
		t.Errorf("env = %v", vm.Env)
	}
	if vm.Restart != "always" {
		t.Errorf("restart = %q, want always (b=true)", vm.Restart)
	}
	if vm.Cmdline != `"quoted" [x]|1 + 1` {
		t.Errorf("cmdline = %q: string and untyped values must be taken raw", vm.Cmdline)
	}

	// The same parsing applies to STACK_VAR_.
	st = mustLoad(t, Options{Dir: dir, Environ: []string{"STACK_VAR_n=2", `STACK_VAR_l=["x"]`}})
	if st.VMs[0].CPUs != 2 || strings.Join(st.VMs[0].Command, ",") != "x" {
		t.Errorf("from environment: cpus %d command %q", st.VMs[0].CPUs, st.VMs[0].Command)
	}
}

func TestVarErrors(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"stack.hcl": typedStack + `
variable "replicas" {
  type    = number
  default = 1
  validation {
    condition     = var.replicas > 0
    error_message = "replicas must be positive"
  }
}
`,
		"bad.vars":      "n = 1\nnope = 2\n",
		"invalid.vars":  "n = 1\nreplicas = 0\n",
		"wrongtyp.vars": "n = \"many\"\n",
	})
	cases := []struct {
		name     string
		opts     Options
		summary  string
		filename string // "" for no subject
		line     int
		detail   string
	}{
		{"missing value", Options{}, "No value for required variable", "stack.hcl", 2, "--var n="},
		{"undeclared --var", Options{Vars: []string{"n=1", "nope=2"}}, "Value for undeclared variable", "", 0, `"nope"`},
		{"malformed --var", Options{Vars: []string{"n=1", "justaname"}}, "Invalid --var option", "", 0, "NAME=VALUE"},
		{"undeclared in var file", Options{VarFiles: []string{"bad.vars"}}, "Value for undeclared variable", "bad.vars", 2, `"nope"`},
		{"validation from --var", Options{Vars: []string{"n=1", "replicas=0"}}, "Invalid value for variable", "<value for var.replicas>", 1, "replicas must be positive"},
		{"validation from var file", Options{VarFiles: []string{"invalid.vars"}}, "Invalid value for variable", "invalid.vars", 2, "replicas must be positive"},
		{"validation from env", Options{Vars: []string{"n=1"}, Environ: []string{"STACK_VAR_replicas=-1"}}, "Invalid value for variable", "<environment variable STACK_VAR_replicas>", 1, "replicas must be positive"},
		{"wrong type in var file", Options{VarFiles: []string{"wrongtyp.vars"}}, "Invalid value for variable", "wrongtyp.vars", 1, "number"},
		{"wrong type from --var", Options{Vars: []string{"n=[1]"}}, "Invalid value for variable", "<value for var.n>", 1, "number"},
		{"missing var file", Options{Vars: []string{"n=1"}, VarFiles: []string{"nonexistent.vars"}}, "Cannot read variable file", "", 0, "nonexistent.vars"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.opts.Dir = dir
			d := loadErr(t, c.opts)
			if !strings.Contains(d.Summary, c.summary) || !strings.Contains(d.Detail, c.detail) {
				t.Errorf("got %q / %q, want summary %q with detail containing %q", d.Summary, d.Detail, c.summary, c.detail)
			}
			switch {
			case c.filename == "" && d.Subject != nil:
				t.Errorf("subject %s, want none", d.Subject)
			case c.filename != "" && d.Subject == nil:
				t.Errorf("no subject, want %s:%d", c.filename, c.line)
			case c.filename != "":
				want := c.filename
				if !strings.HasPrefix(want, "<") {
					want = filepath.Join(dir, want)
				}
				if d.Subject.Filename != want || d.Subject.Start.Line != c.line {
					t.Errorf("subject %s, want %s:%d", d.Subject, want, c.line)
				}
			}
		})
	}
}

// TestMultipleFiles checks -f with several files: blocks merge, paths
// resolve against each file's own directory, path.root is the first
// file's directory, and a duplicate name points at both declarations.
func TestMultipleFiles(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"main/stack.hcl": `
network "lan" {
  subnet = "10.1.0.0/24"
}

locals {
  root = path.root
}
`,
		"extra/vms.hcl": `
vm "web" {
  kernel  = "vmlinuz"
  cmdline = "${file("cmdline.txt")}|${local.root}|${templatefile("t.tpl", { n = 1 })}"
  network "lan" {}
}
`,
		"extra/vmlinuz":     "k",
		"extra/cmdline.txt": "console=ttyS0",
		"extra/t.tpl":       "n=${n}",
		"dup/vms.hcl":       "vm \"web\" {}\n",
		"s1.hcl":            "stack \"one\" {}\n",
		"s2.hcl":            "\nstack \"two\" {}\n",
	})
	st := mustLoad(t, Options{Dir: dir, Files: []string{"main/stack.hcl", "extra/vms.hcl"}})
	vm := st.VMs[0]
	if want := filepath.Join(dir, "extra", "vmlinuz"); vm.Kernel != want {
		t.Errorf("kernel = %q, want %q (relative to the file's directory)", vm.Kernel, want)
	}
	root := filepath.Join(dir, "main")
	if want := "console=ttyS0|" + root + "|n=1"; vm.Cmdline != want {
		t.Errorf("cmdline = %q, want %q", vm.Cmdline, want)
	}
	if st.RootDir != root {
		t.Errorf("RootDir = %q, want %q", st.RootDir, root)
	}
	if len(st.Files) != 2 || st.Files[1] != filepath.Join(dir, "extra", "vms.hcl") {
		t.Errorf("Files = %q", st.Files)
	}
	if len(st.Networks) != 1 || st.Networks[0].Name != "lan" {
		t.Errorf("networks = %v", st.Networks)
	}

	d := loadErr(t, Options{Dir: dir, Files: []string{"main/stack.hcl", "extra/vms.hcl", "dup/vms.hcl"}})
	if d.Summary != "Duplicate vm block" || d.Subject.Filename != filepath.Join(dir, "dup", "vms.hcl") || d.Subject.Start.Line != 1 {
		t.Errorf("got %q at %s, want Duplicate vm block at dup/vms.hcl:1", d.Summary, d.Subject)
	}
	if first := filepath.Join(dir, "extra", "vms.hcl") + ":2"; !strings.Contains(d.Detail, first) {
		t.Errorf("detail %q does not point at the first declaration %s", d.Detail, first)
	}

	d = loadErr(t, Options{Dir: dir, Files: []string{"s1.hcl", "s2.hcl"}})
	if d.Summary != "Duplicate stack block" || d.Subject.Filename != filepath.Join(dir, "s2.hcl") || d.Subject.Start.Line != 2 || !strings.Contains(d.Detail, "s1.hcl:1") {
		t.Errorf("two stack blocks: got %q at %s (%s)", d.Summary, d.Subject, d.Detail)
	}
}

func TestNamespace(t *testing.T) {
	parent := t.TempDir()
	mk := func(name, content string) string {
		d := filepath.Join(parent, name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "stack.hcl"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return d
	}
	plain := mk("My_Project.v2", "")
	labelled := mk("labelled", `stack "demo" {}`)
	bad := mk("___", "")

	if st := mustLoad(t, Options{Dir: plain}); st.Namespace != "my-project-v2" {
		t.Errorf("from directory: %q, want my-project-v2", st.Namespace)
	}
	if st := mustLoad(t, Options{Dir: labelled}); st.Namespace != "demo" || st.Label != "demo" {
		t.Errorf("from label: %q", st.Namespace)
	}
	if st := mustLoad(t, Options{Dir: labelled, Namespace: "other"}); st.Namespace != "other" || st.Label != "demo" {
		t.Errorf("-p must override the label: %q", st.Namespace)
	}
	if d := loadErr(t, Options{Dir: bad}); !strings.Contains(d.Detail, "-p") {
		t.Errorf("undeducible namespace: %q must tell the user to pass -p", d.Detail)
	}
	if d := loadErr(t, Options{Dir: plain, Namespace: "Bad Name"}); d.Summary != "Invalid namespace" {
		t.Errorf("invalid -p: %q", d.Summary)
	}
}

func TestParseSize(t *testing.T) {
	good := map[string]int64{
		"0": 0, "4096": 4096, "1B": 1, "1KiB": 1024, "512MiB": 512 << 20, "1GiB": 1 << 30,
		"2TiB": 2 << 40, "10G": 10e9, "10GB": 10e9, "3K": 3000, "7M": 7e6, "1T": 1e12, " 5 MiB ": 5 << 20,
	}
	for in, want := range good {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "GiB", "1.5GiB", "-1", "1gib", "1 gigabyte", "99999999999TiB", "9223372036854775808"} {
		if got, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", in, got)
		}
	}
}

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]string{"60s": "1m0s", "2m": "2m0s", "1m30s": "1m30s", "500ms": "500ms"} {
		if got, err := ParseDuration(in); err != nil || got.String() != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, in := range []string{"", "60", "soon", "-1s", "0s"} {
		if _, err := ParseDuration(in); err == nil {
			t.Errorf("ParseDuration(%q): want an error", in)
		}
	}
}

// TestFunctions exercises the functions stack adds to the go-cty stdlib.
func TestFunctions(t *testing.T) {
	cases := map[string]string{
		`cidrhost("10.0.0.0/24", 5)`:          "10.0.0.5",
		`cidrhost("10.0.0.0/24", -2)`:         "10.0.0.254",
		`cidrsubnet("10.0.0.0/16", 8, 3)`:     "10.0.3.0/24",
		`cidrsubnet("10.0.0.0/30", 2, 3)`:     "10.0.0.3/32",
		`cidrnetmask("10.0.0.0/20")`:          "255.255.240.0",
		`base64encode("hi")`:                  "aGk=",
		`base64decode("aGk=")`:                "hi",
		`jsonencode({a = [1, "x"]})`:          `{"a":[1,"x"]}`,
		`yamlencode({a = [1, "x"]})`:          "\"a\":\n- 1\n- \"x\"\n",
		`join(",", keys(yamldecode("b: 1")))`: "b",
		`try(file("nope"), "fallback")`:       "fallback",
		`tostring(can(cidrhost("x", 1)))`:     "false",
		`format("%03d", max(1, 7))`:           "007",
	}
	for expr, want := range cases {
		// env takes any string (cmdline, one line only, would not).
		dir := writeFiles(t, map[string]string{"stack.hcl": "vm \"a\" {\n  env = { V = " + expr + " }\n}\n"})
		st, src, diags := Load(Options{Dir: dir, Environ: []string{}})
		if len(diags) > 0 {
			t.Errorf("%s:\n%s", expr, renderDiags(src, diags))
			continue
		}
		if got := st.VMs[0].Env["V"]; got != want {
			t.Errorf("%s = %q, want %q", expr, got, want)
		}
	}
	for _, expr := range []string{`cidrhost("10.0.0.0/24", 256)`, `cidrsubnet("10.0.0.0/24", 9, 0)`, `cidrhost("fd00::/64", 1)`, `base64decode("!!")`} {
		// env takes any string (cmdline, one line only, would not).
		dir := writeFiles(t, map[string]string{"stack.hcl": "vm \"a\" {\n  env = { V = " + expr + " }\n}\n"})
		if _, _, diags := Load(Options{Dir: dir, Environ: []string{}}); !diags.HasErrors() {
			t.Errorf("%s: want an error", expr)
		}
	}
}

func TestMissingStackFile(t *testing.T) {
	dir := t.TempDir()
	d := loadErr(t, Options{Dir: dir})
	if d.Summary != "Cannot read stack file" || !strings.Contains(d.Detail, "-f FILE") {
		t.Errorf("no stack.hcl: %q / %q", d.Summary, d.Detail)
	}
	d = loadErr(t, Options{Dir: dir, Files: []string{"other.hcl"}})
	if !strings.Contains(d.Detail, filepath.Join(dir, "other.hcl")) {
		t.Errorf("missing -f file: %q", d.Detail)
	}
}

// TestSensitiveNotShown checks that a diagnostic about an expression using
// a sensitive variable does not print its value, while an ordinary one does.
func TestSensitiveNotShown(t *testing.T) {
	for _, sensitive := range []bool{true, false} {
		dir := writeFiles(t, map[string]string{"stack.hcl": fmt.Sprintf(`
variable "token" {
  default   = "s3cret-value"
  sensitive = %v
}

vm "a" {
  cpus = var.token
}
`, sensitive)})
		_, src, diags := Load(Options{Dir: dir, Environ: []string{}})
		if !diags.HasErrors() {
			t.Fatal("want a type error")
		}
		out := renderDiags(src, diags)
		if shown := strings.Contains(out, "s3cret-value"); shown == sensitive {
			t.Errorf("sensitive=%v: value shown=%v in:\n%s", sensitive, shown, out)
		}
	}
}
