package app

import (
	"strings"
	"testing"

	"github.com/stackvm/stack/state"
)

// complete runs cobra's hidden __complete command, as the shell scripts
// that `stack completion SHELL` prints do, and returns the candidates and
// the directive line.
func complete(t *testing.T, dir string, args ...string) (string, string) {
	t.Helper()
	r := run(t, dir, append([]string{"__complete"}, args...)...)
	if r.code != 0 {
		t.Fatalf("__complete %v: %+v", args, r)
	}
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	return strings.Join(lines[:len(lines)-1], " "), lines[len(lines)-1]
}

func TestCompletionOfVMNames(t *testing.T) {
	stateDir := t.TempDir()
	st := state.New("shop")
	for _, v := range []struct{ addr, name string }{{"vm.db", "db"}, {"vm.web[0]", "web-0"}, {"vm.web[1]", "web-1"}} {
		st.VMs[v.addr] = &state.VM{Address: v.addr, Name: v.name, Status: state.StatusReady}
	}
	if err := state.Open(stateDir, "shop").Write(st); err != nil {
		t.Fatal(err)
	}
	empty := t.TempDir() // no stack file: the namespace's state alone
	files := writeStack(t, stackHCL)
	ns := []string{"-p", "shop", "--state-dir", stateDir}

	for _, tc := range []struct {
		name string
		dir  string
		args []string
		want string
	}{
		{"every VM and the blocks of several", empty, append(ns, "stop", ""), "db web-0 web-1 web"},
		{"by prefix", empty, append(ns, "logs", "web-"), "web-0 web-1"},
		{"not twice", empty, append(ns, "down", "web-0", ""), "db web-1 web"},
		{"one VM for console", empty, append(ns, "console", "db", ""), ""},
		{"the VM of exec", empty, append(ns, "exec", "w"), "web-0 web-1 web"},
		{"unknown namespace", empty, []string{"-p", "nope", "--state-dir", stateDir, "stop", ""}, ""},
		// The stack file's VMs too, for up: the namespace demo has no state.
		{"from the stack files", files, []string{"--state-dir", stateDir, "up", ""}, "web-0 web-1 web"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, directive := complete(t, tc.dir, tc.args...)
			if got != tc.want {
				t.Errorf("candidates %q, want %q", got, tc.want)
			}
			if directive != ":4" { // ShellCompDirectiveNoFileComp
				t.Errorf("directive %q, want :4 (no file names)", directive)
			}
		})
	}
	// The install command the docs give exists for each shell.
	for _, sh := range []string{"bash", "zsh", "fish"} {
		if r := run(t, empty, "completion", sh); r.code != 0 || !strings.Contains(r.stdout, "__complete") {
			t.Errorf("completion %s: exit %d, %d bytes", sh, r.code, len(r.stdout))
		}
	}
}
