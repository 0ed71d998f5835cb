package app

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stackvm/stack/internal/filenames"
)

// TestNamespaceCheckedBeforeAnyFile runs every namespace-level command with
// a -p that is not a namespace and no stack file: each must refuse it before
// creating anything, inside the state directory or outside it.
func TestNamespaceCheckedBeforeAnyFile(t *testing.T) {
	root := t.TempDir()
	stateDir := filepath.Join(root, "state", "inner")
	t.Setenv("XDG_RUNTIME_DIR", filepath.Join(root, "run"))
	cmds := [][]string{
		{"down"}, {"down", "--force"}, {"ps"}, {"logs", "web"}, {"stop", "--timeout", "1s"}, {"start"},
		{"exec", "web", "true"}, {"console", "web"}, {"snapshot", "ls"}, {"snapshot", "save", "s"},
	}
	for _, ns := range []string{"../x", "../esc/deep", "./al", "AL", "-x", strings.Repeat("a", 64)} {
		for _, c := range cmds {
			args := append([]string{"--state-dir", stateDir, "-p", ns}, c...)
			r := run(t, root, args...)
			if r.code == 0 || !strings.Contains(r.stderr, "not a valid namespace") {
				t.Errorf("stack %s: code %d, want a refused namespace; stderr:\n%s", strings.Join(args, " "), r.code, r.stderr)
			}
		}
	}
	// Nothing was created: not the state directory, not the runtime
	// directory, not a lock file beside them.
	ents, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		t.Errorf("%s was created", filepath.Join(root, e.Name()))
	}
}

// TestSharedDirectoriesRefused plants the runtime and state directories
// beforehand, as another user would (mode 0777, or owned by nobody): every
// command must refuse them, saying which and why, rather than put (or dial)
// the supervisor's socket where that user can replace it.
func TestSharedDirectoriesRefused(t *testing.T) {
	const ns = "shared-dirs"
	for _, tc := range []struct {
		what  string
		plant func(run, state string) string // returns the planted directory
	}{
		{"runtime root 0777", func(run, _ string) string { return plantDir(t, filepath.Join(run, "stack"), 0o777, -1) }},
		{"runtime root of nobody", func(run, _ string) string { return plantDir(t, filepath.Join(run, "stack"), 0o700, 65534) }},
		{"namespace runtime 0777", func(run, _ string) string {
			plantDir(t, filepath.Join(run, "stack"), 0o700, -1)
			return plantDir(t, filenames.NamespaceRuntime(filepath.Join(run, "stack"), ns), 0o777, -1)
		}},
		{"namespace state 0770", func(_, state string) string {
			return plantDir(t, filenames.NamespaceState(state, ns), 0o770, -1)
		}},
	} {
		t.Run(tc.what, func(t *testing.T) {
			root := t.TempDir()
			runDir, state := filepath.Join(root, "run"), filepath.Join(root, "state")
			t.Setenv("XDG_RUNTIME_DIR", runDir)
			planted := tc.plant(runDir, state)
			for _, c := range [][]string{{"ps"}, {"down"}} {
				r := run(t, root, append([]string{"--state-dir", state, "-p", ns}, c...)...)
				if r.code == 0 || !strings.Contains(r.stderr, planted) || !strings.Contains(r.stderr, "not private") {
					t.Errorf("stack %s with %s: code %d, want a refusal naming %s; stderr:\n%s", c[0], tc.what, r.code, planted, r.stderr)
				}
			}
			if _, err := os.Stat(filenames.SupervisorSocketPath(filepath.Join(runDir, "stack"), ns)); err == nil {
				t.Errorf("a supervisor socket was made in the planted directory")
			}
		})
	}
}

// plantDir creates dir with mode, owned by uid (-1: this user).
func plantDir(t *testing.T, dir string, mode os.FileMode, uid int) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, mode); err != nil {
		t.Fatal(err)
	}
	if uid >= 0 && os.Getuid() != 0 {
		t.Skip("only root can give a directory to another user")
	}
	if err := os.Chown(dir, uid, -1); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestValidateCatchesBootFailures checks at validate what used to fail only
// at up: a cmdline with a newline, and a shared_dir whose host_path is a
// symbolic link.
func TestValidateCatchesBootFailures(t *testing.T) {
	real := t.TempDir()
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ what, body, want string }{
		{"cmdline with a newline", `cmdline = "quiet\nloglevel=7"`, "newline"},
		{"cmdline with a NUL", `cmdline = "quiet\u0000"`, "newline"},
		{"host_path a symlink", fmt.Sprintf("shared_dir \"data\" {\n    host_path  = %q\n    guest_path = \"/data\"\n  }", link), "symbolic link"},
	} {
		dir := writeStack(t, "vm \"a\" {\n  command = [\"true\"]\n  "+tc.body+"\n}\n")
		r := run(t, dir, "validate")
		if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("validate with a %s: code %d, want an error about %q; stderr:\n%s", tc.what, r.code, tc.want, r.stderr)
		}
	}
	// The link's target itself is fine.
	dir := writeStack(t, fmt.Sprintf("vm \"a\" {\n  command = [\"true\"]\n  shared_dir \"data\" {\n    host_path  = %q\n    guest_path = \"/data\"\n  }\n}\n", real))
	if r := run(t, dir, "validate"); r.code != 0 {
		t.Errorf("validate with a real host_path: %+v", r)
	}
}

// TestReencodedStatePlansNoChange re-encodes state.json as another JSON tool
// would (no HTML escapes, other indentation, é as an escape): the values are
// the same, so the plan must be too.
func TestReencodedStatePlansNoChange(t *testing.T) {
	hcl := strings.Replace(stackHCL, `command   = ["httpd", "-f", "-p", "80"]`, `command   = ["sh", "-c", "httpd -p 80 && echo <é> >/dev/null"]`, 1)
	dir := writeStack(t, hcl)
	stateDir := t.TempDir()
	applyPlan(t, dir, stateDir)
	path := filepath.Join(stateDir, "demo", "state.json")
	var v any
	if err := json.Unmarshal(mustRead(t, path), &v); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "\t")
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	out := strings.ReplaceAll(b.String(), "é", `\u00e9`)
	if err := os.WriteFile(path, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	assertActions(t, "re-encoded", planJSON(t, dir, "--state-dir="+stateDir),
		map[string]string{"network.lan": "no-op", "vm.web[0]": "no-op", "vm.web[1]": "no-op"})
}

// TestShareOfSystemDirectoryWarns shares /, /etc, /root and the state
// directory: validate accepts each (it is the user's call) but warns.
func TestShareOfSystemDirectoryWarns(t *testing.T) {
	stateDir := t.TempDir()
	for _, host := range []string{"/", "/etc", "/root", stateDir, filepath.Dir(stateDir)} {
		dir := writeStack(t, fmt.Sprintf("vm \"a\" {\n  command = [\"true\"]\n  shared_dir \"s\" {\n    host_path  = %q\n    guest_path = \"/s\"\n    read_only  = true\n  }\n}\n", host))
		r := run(t, dir, "--state-dir", stateDir, "validate")
		if r.code != 0 || !strings.Contains(r.stderr, "Warning") || !strings.Contains(r.stderr, "system directory") {
			t.Errorf("validate sharing %s: code %d, want valid with a warning; stderr:\n%s", host, r.code, r.stderr)
		}
	}
	ordinary := t.TempDir()
	dir := writeStack(t, fmt.Sprintf("vm \"a\" {\n  command = [\"true\"]\n  shared_dir \"s\" {\n    host_path  = %q\n    guest_path = \"/s\"\n  }\n}\n", ordinary))
	if r := run(t, dir, "--state-dir", stateDir, "validate"); r.code != 0 || strings.Contains(r.stderr, "Warning") {
		t.Errorf("validate sharing %s: %+v, want no warning", ordinary, r)
	}
}
