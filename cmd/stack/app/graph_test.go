package app

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files")

// graphStack has every kind of resource and dependency: networks, a
// volume, a count and a for_each block, and depends_on on both.
const graphStack = `stack "demo" {}

network "lan" {
  subnet = "10.42.0.0/24"
}

network "back" {
  subnet = "10.43.0.0/24"
}

volume "pgdata" {
  size = "1G"
}

vm "db" {
  network "back" {}
  disk "data" {
    volume     = "pgdata"
    guest_path = "/var/lib/data"
  }
}

vm "cache" {
  for_each = toset(["blue"])
  network "back" {}
}

vm "web" {
  count      = 2
  depends_on = [vm.db, vm.cache]
  network "lan" {}
  network "back" {}
}
`

func TestGraphGoldens(t *testing.T) {
	dir := writeStack(t, graphStack)
	for _, tc := range []struct{ format, golden string }{
		{"dot", "graph.dot"},
		{"mermaid", "graph.mmd"},
	} {
		t.Run(tc.format, func(t *testing.T) {
			r := run(t, dir, "graph", "--format", tc.format)
			if r.code != 0 {
				t.Fatalf("graph: %+v", r)
			}
			checkGolden(t, filepath.Join("testdata", tc.golden), r.stdout)
		})
	}
	if r := run(t, dir, "graph"); r.code != 0 || !strings.HasPrefix(r.stdout, `digraph "demo" {`) {
		t.Errorf("graph defaults to dot: %+v", r)
	}
	if r := run(t, dir, "graph", "--format", "png"); r.code != 1 || !strings.Contains(r.stderr, `unknown --format "png"`) {
		t.Errorf("graph --format png: %+v", r)
	}
}

// checkGolden compares got with the golden file at path (rewritten with
// -update).
func checkGolden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden (run with -update to create): %v", err)
	}
	if got != string(want) {
		t.Errorf("%s differs:\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}
