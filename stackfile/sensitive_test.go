package stackfile

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
)

const sensitiveStack = `
variable "pw" {
  type      = string
  sensitive = true
}
locals {
  dsn = "postgres://app:${var.pw}@db/app"
}
vm "db" {
  env     = { PGPASSWORD = var.pw, GREETING = "hi" }
  command = ["sh", "-c", "echo ${local.dsn}"]
  cmdline = "quiet"
  ready {
    exec = ["check", upper(var.pw)]
  }
}
vm "web" {
  env = { DSN = local.dsn }
}
vm "plain" {
  env = { GREETING = "hi" }
}
`

// A value derived from a sensitive variable, directly, through a local, a
// template or a function, makes its attribute sensitive; others stay clear.
func TestSensitiveAttributes(t *testing.T) {
	dir := writeFiles(t, map[string]string{"stack.hcl": sensitiveStack})
	st := mustLoad(t, Options{Dir: dir, Namespace: "ns", Vars: []string{"pw=hunter2"}})
	want := map[string][]string{
		"vm.db":    {"command", "env", "ready"},
		"vm.web":   {"env"},
		"vm.plain": nil,
	}
	for _, vm := range st.VMs {
		if !slices.Equal(vm.Sensitive, want[vm.Address]) {
			t.Errorf("%s: Sensitive = %q, want %q", vm.Address, vm.Sensitive, want[vm.Address])
		}
		if vm.Address == "vm.db" && vm.Env["PGPASSWORD"] != "hunter2" {
			t.Errorf("the guest's value is %q, want the real one", vm.Env["PGPASSWORD"])
		}
	}

	// A saved plan's copy has none of it; the files give it back.
	db := st.VMs[0]
	stripped := db.WithoutSensitive()
	data, err := json.Marshal(stripped)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), "hunter2") || strings.Contains(string(data), "HUNTER2") {
		t.Errorf("WithoutSensitive kept the value: %s", data)
	}
	stripped.RestoreSensitive(db)
	if !slices.Equal(stripped.Command, db.Command) || stripped.Env["PGPASSWORD"] != "hunter2" || !slices.Equal(stripped.Ready.Exec, db.Ready.Exec) {
		t.Errorf("RestoreSensitive: got %+v", stripped)
	}
}

// A sensitive value anywhere it would be shown or recorded in clear is an
// error at the attribute, and the diagnostic does not print the value.
func TestSensitiveNotAllowed(t *testing.T) {
	for name, body := range map[string]string{
		"count":     `vm "a" { count = var.pw - 4240 }`,
		"memory":    `vm "a" { memory_mb = 64 + var.pw }`,
		"cmdline":   `vm "a" { cmdline = "pw=${var.pw}" }`,
		"http":      "vm \"a\" {\n  ready {\n    http = \"http://localhost/${var.pw}\"\n  }\n}",
		"publish":   "vm \"a\" {\n  publish {\n    host_port  = var.pw\n    guest_port = 80\n  }\n}",
		"network":   `network "lan" { subnet = "10.${var.pw - 4240}.0.0/24" }`,
		"via local": "locals { n = var.pw - 4240 }\nvm \"a\" { cpus = local.n }",
	} {
		t.Run(name, func(t *testing.T) {
			src := "variable \"pw\" {\n  sensitive = true\n}\n" + body + "\n"
			dir := writeFiles(t, map[string]string{"stack.hcl": src})
			_, srcs, diags := Load(Options{Dir: dir, Namespace: "ns", Vars: []string{"pw=4242"}, Environ: []string{}})
			if !diags.HasErrors() {
				t.Fatalf("loaded without error")
			}
			text := renderDiags(srcs, diags)
			if !strings.Contains(text, "Sensitive value not allowed here") {
				t.Errorf("diagnostics do not say why:\n%s", text)
			}
			if strings.Contains(text, "4242") {
				t.Errorf("diagnostics show the value:\n%s", text)
			}
		})
	}
}

// A failing expression that refers to a sensitive value through a local
// does not print it either.
func TestSensitiveDiagnostics(t *testing.T) {
	src := "variable \"pw\" {\n  sensitive = true\n}\nlocals {\n  p = var.pw\n}\nvm \"a\" {\n  env = { X = local.p + 1 }\n}\n"
	dir := writeFiles(t, map[string]string{"stack.hcl": src})
	_, srcs, diags := Load(Options{Dir: dir, Namespace: "ns", Vars: []string{"pw=hunter2"}, Environ: []string{}})
	if !diags.HasErrors() {
		t.Fatalf("loaded without error")
	}
	if text := renderDiags(srcs, diags); strings.Contains(text, "hunter2") {
		t.Errorf("diagnostics show the value:\n%s", text)
	}
}

// A user_data the YAML checker refuses is reported without its message,
// which quotes the document (here: unknown anchor 'hunter2'), when it
// holds a sensitive value.
func TestSensitiveUserData(t *testing.T) {
	src := "variable \"pw\" {\n  sensitive = true\n}\nvm \"a\" {\n  kernel    = \"k\"\n  root_disk = \"d\"\n" +
		"  cloud_init {\n    user_data = \"#cloud-config\\nx: *${var.pw}\\n\"\n  }\n}\n"
	dir := writeFiles(t, map[string]string{"stack.hcl": src, "k": "", "d": ""})
	_, srcs, diags := Load(Options{Dir: dir, Namespace: "ns", Vars: []string{"pw=hunter2"}, Environ: []string{}})
	text := renderDiags(srcs, diags)
	if !diags.HasErrors() || !strings.Contains(text, "Invalid user_data") {
		t.Fatalf("want an Invalid user_data error:\n%s", text)
	}
	if strings.Contains(text, "hunter2") {
		t.Errorf("diagnostics show the value:\n%s", text)
	}
}

// A secret block keeps the file's path and digest, never its content, and
// makes the VM's "secret" attribute sensitive; cloud-init VMs refuse it.
func TestSecretBlock(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"stack.hcl":  "vm \"a\" {\n  secret \"token\" {\n    file = \"keys/token\"\n  }\n}\n",
		"keys/token": "hunter2",
	})
	st := mustLoad(t, Options{Dir: dir, Namespace: "ns"})
	vm := st.VMs[0]
	if len(vm.Secrets) != 1 || vm.Secrets[0].Name != "token" || vm.Secrets[0].HostPath != dir+"/keys/token" || len(vm.Secrets[0].Digest) != 64 {
		t.Fatalf("Secrets = %+v", vm.Secrets)
	}
	if !slices.Equal(vm.Sensitive, []string{"secret"}) {
		t.Errorf("Sensitive = %q", vm.Sensitive)
	}
	data, _ := json.Marshal(st)
	assertNoValue(t, "the loaded stack", string(data))
	if data, _ := json.Marshal(vm.WithoutSensitive()); strings.Contains(string(data), vm.Secrets[0].Digest) {
		t.Errorf("a saved plan's copy keeps the digest: %s", data)
	}

	ci := writeFiles(t, map[string]string{
		"stack.hcl": "vm \"a\" {\n  kernel    = \"k\"\n  root_disk = \"d\"\n  secret \"token\" {\n    file = \"t\"\n  }\n}\n",
		"k":         "", "d": "", "t": "x",
	})
	if d := loadErr(t, Options{Dir: ci, Namespace: "ns"}); d.Summary != "secret needs initramfs mode" {
		t.Errorf("cloud-init VM with a secret: %s", d.Summary)
	}
}

func assertNoValue(t *testing.T, what, text string) {
	t.Helper()
	if strings.Contains(text, "hunter2") {
		t.Errorf("%s shows the value: %s", what, text)
	}
}
