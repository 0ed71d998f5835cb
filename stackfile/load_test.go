package stackfile

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
)

var update = flag.Bool("update", false, "rewrite golden files")

type want struct {
	line    int
	summary string
}

var wantRe = regexp.MustCompile(`^# want: (\d+): (.+)$`)

// readWants reads the "# want: LINE: SUMMARY" header lines of a test file.
func readWants(t *testing.T, path string) []want {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var ws []want
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		m := wantRe.FindStringSubmatch(sc.Text())
		if m == nil {
			break
		}
		n, _ := strconv.Atoi(m[1])
		ws = append(ws, want{n, m[2]})
	}
	if len(ws) == 0 {
		t.Fatalf("%s: no \"# want: LINE: SUMMARY\" header", path)
	}
	return ws
}

func renderDiags(src *Sources, diags hcl.Diagnostics) string {
	var b bytes.Buffer
	if err := src.WriteDiagnostics(&b, diags, false, 100); err != nil {
		return err.Error()
	}
	return b.String()
}

// TestInvalid loads every file under testdata/invalid and requires exactly
// the diagnostics its header states: each want is matched by an error at
// that line of that file whose summary contains the text, and every error
// is wanted.
func TestInvalid(t *testing.T) {
	files, err := filepath.Glob("testdata/invalid/*.hcl")
	if err != nil || len(files) < 40 {
		t.Fatalf("want at least 40 invalid files, got %d (%v)", len(files), err)
	}
	for _, path := range files {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".hcl"), func(t *testing.T) {
			ws := readWants(t, path)
			abs, _ := filepath.Abs(path)
			st, src, diags := Load(Options{Dir: "testdata/invalid", Files: []string{filepath.Base(path)}, Namespace: "test", Environ: []string{}})
			if !diags.HasErrors() {
				t.Fatalf("no error diagnostics, want %v", ws)
			}
			if st != nil {
				t.Errorf("Load returned a stack along with errors")
			}
			matched := make([]bool, len(ws))
			for _, d := range diags {
				if d.Severity != hcl.DiagError {
					continue
				}
				ok := false
				for i, w := range ws {
					if d.Subject != nil && d.Subject.Filename == abs && d.Subject.Start.Line == w.line && strings.Contains(d.Summary, w.summary) {
						matched[i], ok = true, true
					}
				}
				if !ok {
					t.Errorf("unexpected diagnostic:\n%s", renderDiags(src, hcl.Diagnostics{d}))
				}
			}
			for i, w := range ws {
				if !matched[i] {
					t.Errorf("missing diagnostic at line %d with summary %q; got:\n%s", w.line, w.summary, renderDiags(src, diags))
				}
			}
		})
	}
}

// normalise makes a stack comparable across checkouts: absolute paths
// under the test directory become $TESTDATA.
func normalise(t *testing.T, st *Stack) []byte {
	t.Helper()
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	td, _ := filepath.Abs("testdata")
	return append(bytes.ReplaceAll(b, []byte(td), []byte("$TESTDATA")), '\n')
}

func checkGolden(t *testing.T, golden string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("read golden file (run with -update to create it): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (run with -update to accept):\n--- got\n%s\n--- want\n%s", golden, got, want)
	}
}

// TestValid loads every file under testdata/valid and compares the stack,
// as JSON, with its golden file.
func TestValid(t *testing.T) {
	files, err := filepath.Glob("testdata/valid/*.hcl")
	if err != nil || len(files) == 0 {
		t.Fatalf("no valid files: %v", err)
	}
	for _, path := range files {
		name := strings.TrimSuffix(filepath.Base(path), ".hcl")
		t.Run(name, func(t *testing.T) {
			st, src, diags := Load(Options{Dir: "testdata/valid", Files: []string{filepath.Base(path)}, Environ: []string{}})
			if len(diags) > 0 {
				t.Fatalf("diagnostics:\n%s", renderDiags(src, diags))
			}
			checkGolden(t, filepath.Join("testdata/valid", name+".json"), normalise(t, st))
		})
	}
}
