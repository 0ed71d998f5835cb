package app

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stackvm/stack/internal/filenames"
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
// but the supervisor's VM record (which boots the guest; see
// docs/stackfile.md). A saved plan applied with another value is refused.
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
		if d.Name() == filenames.VMRecord {
			return nil // the guest's boot configuration, by design
		}
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
