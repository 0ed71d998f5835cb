package app

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/supervisor/client"
)

// A stack with a sensitive variable, used in env directly and through a
// local in command. The workload hands the value to `exec` through a file
// in the guest, without printing it on the console.
const sensitiveStack = `variable "pw" {
  type      = string
  sensitive = true
}

locals {
  dsn = "postgres://app:${var.pw}@db/app"
}

network "lan" {
  subnet = "10.57.0.0/24"
}

vm "db" {
  env     = { PGPASSWORD = var.pw, GREETING = "hi" }
  command = ["sh", "-c", "printf %s \"$PGPASSWORD\" > /tmp/pw; echo '${local.dsn}' > /tmp/dsn; echo $GREETING-db; exec sleep 100000"]
  network "lan" {}
}
`

// TestSensitiveValues: a sensitive variable's value reaches the guest and
// appears in none of plan, plan --json, a saved plan, up's output, ps
// --json, state.json or any other file of the namespace's state directory
// (the supervisor's VM record keeps the guest's configuration encrypted, and
// a new supervisor boots the guest from it). A saved plan applied with
// another value is refused.
func TestSensitiveValues(t *testing.T) {
	requireVMs(t)
	secret := fmt.Sprintf("hunter2-%d-s3cr3t", os.Getpid())
	other := secret + "-changed"
	dir := t.TempDir()
	file := filepath.Join(dir, "stack.hcl")
	writeFile(t, file, sensitiveStack)
	c := newCLI(t, fmt.Sprintf("sens-%d", os.Getpid()))
	with := func(pw string, args ...string) []string {
		return append([]string{"-f", file, "--var", "pw=" + pw}, args...)
	}
	clean := func(what, text string) {
		t.Helper()
		if strings.Contains(text, secret) || strings.Contains(text, other) {
			t.Errorf("%s shows the sensitive value:\n%s", what, text)
		}
	}

	r := c.mustRun(with(secret, "plan", "--json")...)
	clean("plan --json", r.stdout+r.stderr)
	if !strings.Contains(r.stdout, `"env": "(sensitive value)"`) || !strings.Contains(r.stdout, `"command": "(sensitive value)"`) {
		t.Errorf("plan --json does not mask env and command:\n%s", r.stdout)
	}
	planFile := filepath.Join(dir, "plan.json")
	r = c.mustRun(with(secret, "plan", "--out", planFile)...)
	clean("plan", r.stdout+r.stderr)
	if !strings.Contains(r.stdout, "= (sensitive value)") {
		t.Errorf("plan does not mask:\n%s", r.stdout)
	}
	clean("the saved plan", string(mustRead(t, planFile)))

	// The saved plan takes the value from the files: another one is stale.
	r = c.run(with(other, "up", "--plan", planFile)...)
	if r.code != 1 || !strings.Contains(r.stderr, "not the one the plan was made with") {
		t.Fatalf("up --plan with another value: exit %d\n%s", r.code, r.stderr)
	}
	clean("the refused up", r.stdout+r.stderr)

	r = c.mustRun(with(secret, "up", "--plan", planFile, "--progress", "plain")...)
	clean("up", r.stdout+r.stderr)

	// The guest got the real values (once its workload wrote them).
	c.waitConsole("db", "db | hi-db", 30*time.Second)
	if r := c.mustRun("exec", "db", "--", "cat", "/tmp/pw"); r.stdout != secret {
		t.Fatalf("the guest's PGPASSWORD is %q, want the variable's value", r.stdout)
	}
	if r := c.mustRun("exec", "db", "--", "cat", "/tmp/dsn"); r.stdout != "postgres://app:"+secret+"@db/app\n" {
		t.Fatalf("the guest's command got %q", r.stdout)
	}
	r = c.mustRun("ps", "--json")
	clean("ps --json", r.stdout)

	// The hash detects no change for the same value and one for another.
	r = c.run(with(secret, "plan", "--detailed-exitcode")...)
	if r.code != 0 {
		t.Errorf("plan with the same value: exit %d\n%s", r.code, r.stdout)
	}
	r = c.run(with(other, "plan", "--detailed-exitcode")...)
	if r.code != 2 || !strings.Contains(r.stdout, "~ command = (sensitive value) -> (sensitive value) # forces replacement") {
		t.Errorf("plan with another value: exit %d\n%s", r.code, r.stdout)
	}
	clean("plan of a change", r.stdout+r.stderr)

	// A new supervisor re-adopts the VM and boots it again from its
	// record, whose sealed configuration it opens with the record key.
	c.killSupervisor()
	c.mustRun("stop", "db")
	c.mustRun("start", "db")
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		r := c.run("exec", "db", "--", "cat", "/tmp/pw")
		if r.code == 0 && r.stdout == secret {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a new supervisor booted db again, its PGPASSWORD is %q (%s)", r.stdout, r.stderr)
		}
	}

	st := string(mustRead(t, filepath.Join(c.stateDir, c.ns, filenames.StateFile)))
	if !strings.Contains(st, `"(sensitive)"`) {
		t.Errorf("state.json has no sealed value:\n%s", st)
	}
	// Every file of the namespace's state: logs, state, consoles.
	nsDir := filepath.Join(c.stateDir, c.ns)
	var files []string
	err := filepath.WalkDir(nsDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(nsDir, path)
		files = append(files, rel)
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if strings.Contains(string(data), secret) {
			t.Errorf("%s holds the sensitive value", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("files checked: %v", files)
	c.mustRun("down")
}

// A VM with a secret file; the file's directory holds another file the
// guest must not see.
const secretFileStack = `network "lan" {
  subnet = "10.58.0.0/24"
}

vm "app" {
  command = ["sh", "-c", "echo app-up; exec sleep 100000"]
  secret "db-password" {
    file = "./keys/db-password"
  }
  network "lan" {}
}
`

// TestSecretFile: a secret block's file is readable, read-only, at
// /run/secrets/NAME in the guest, and neither its content nor its sibling
// files are anywhere in the plan, the state directory, or the guest's
// other mounts; a changed file plans the VM's replacement.
func TestSecretFile(t *testing.T) {
	requireVMs(t)
	secret := fmt.Sprintf("file-secret-%d-x9", os.Getpid())
	dir := t.TempDir()
	file := filepath.Join(dir, "stack.hcl")
	writeFile(t, file, secretFileStack)
	if err := os.MkdirAll(filepath.Join(dir, "keys"), 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "keys", "db-password"), secret)
	writeFile(t, filepath.Join(dir, "keys", "other"), "sibling-"+secret)
	c := newCLI(t, fmt.Sprintf("sfile-%d", os.Getpid()))

	r := c.mustRun("-f", file, "up", "--progress", "plain")
	if strings.Contains(r.stdout+r.stderr, secret) {
		t.Errorf("up shows the secret:\n%s%s", r.stdout, r.stderr)
	}
	c.waitConsole("app", "app | app-up", 30*time.Second)
	if r := c.mustRun("exec", "app", "--", "cat", "/run/secrets/db-password"); r.stdout != secret {
		t.Fatalf("/run/secrets/db-password holds %q", r.stdout)
	}
	if r := c.run("exec", "app", "--", "sh", "-c", "echo x > /run/secrets/db-password"); r.code == 0 {
		t.Error("the guest could write its secret")
	}
	if r := c.mustRun("exec", "app", "--", "ls", "/run/secrets"); r.stdout != "db-password\n" {
		t.Errorf("/run/secrets lists %q, want only the secret", r.stdout)
	}

	// The content is in no file of the namespace's state.
	nsDir := filepath.Join(c.stateDir, c.ns)
	filepath.WalkDir(nsDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if data, _ := os.ReadFile(path); strings.Contains(string(data), secret) {
			t.Errorf("%s holds the secret", path)
		}
		return nil
	})

	// The same file plans nothing; another content, a masked replacement.
	if r := c.run("-f", file, "plan", "--detailed-exitcode"); r.code != 0 {
		t.Errorf("plan with the same file: exit %d\n%s", r.code, r.stdout)
	}
	writeFile(t, filepath.Join(dir, "keys", "db-password"), secret+"-rotated")
	r = c.run("-f", file, "plan", "--detailed-exitcode")
	if r.code != 2 || !strings.Contains(r.stdout, "~ secret = (sensitive value) -> (sensitive value) # forces replacement") {
		t.Errorf("plan with a changed file: exit %d\n%s", r.code, r.stdout)
	}
	if strings.Contains(r.stdout, secret) {
		t.Errorf("plan shows the secret:\n%s", r.stdout)
	}
	c.mustRun("down")
}

// killSupervisor kills the namespace's supervisor and waits until it is
// gone; the next command starts a new one, which re-adopts the VMs.
func (c *cli) killSupervisor() {
	c.t.Helper()
	sv, err := client.Dial(context.Background(), filenames.RuntimeRoot(), c.stateDir, c.ns)
	if err != nil {
		c.t.Fatal(err)
	}
	pong, err := sv.Ping(context.Background())
	if err != nil {
		c.t.Fatal(err)
	}
	if err := syscall.Kill(pong.PID, syscall.SIGKILL); err != nil {
		c.t.Fatal(err)
	}
	for syscall.Kill(pong.PID, 0) == nil {
		time.Sleep(20 * time.Millisecond)
	}
}
