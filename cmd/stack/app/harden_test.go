package app

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestNamespaceCheckedBeforeAnyFile runs every namespace-level command with
// a -p that is not a namespace and no stack file: each must refuse it before
// creating anything, inside the state directory or outside it.
func TestNamespaceCheckedBeforeAnyFile(t *testing.T) {
	root := t.TempDir()
	stateDir := filepath.Join(root, "state", "inner")
	t.Setenv("XDG_RUNTIME_DIR", filepath.Join(root, "run"))
	cmds := [][]string{
		{"down"}, {"ps"}, {"logs", "web"}, {"stop", "--timeout", "1s"}, {"start"},
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
