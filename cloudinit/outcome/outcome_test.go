package outcome

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files")

// golden is what a status.json in testdata reads as, and how it is judged
// with and without strict.
type golden struct {
	Report  *Report `json:"report"`
	Default Verdict `json:"default"`
	Strict  Verdict `json:"strict"`
}

// Each testdata/NAME.json (a cloud-init status.json; see testdata/README)
// against testdata/NAME.golden. -update rewrites the goldens.
func TestGoldens(t *testing.T) {
	inputs, err := filepath.Glob("testdata/*.json")
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no inputs: %v", err)
	}
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".json")
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			r, err := Parse(data)
			if err != nil {
				t.Fatal(err)
			}
			// The guest sends the file on one line, its newlines
			// deleted: the same report.
			oneLine, err := Parse(bytes.ReplaceAll(data, []byte("\n"), nil))
			if err != nil || !reflect.DeepEqual(oneLine, r) {
				t.Fatalf("on one line: %+v, %v; want %+v", oneLine, err, r)
			}
			got, err := json.MarshalIndent(golden{Report: r, Default: r.Judge(false), Strict: r.Judge(true)}, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, '\n')
			path := filepath.Join("testdata", name+".golden")
			if *update {
				if err := os.WriteFile(path, got, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs (go test -update to rewrite):\n%s", path, got)
			}
		})
	}
}

// The properties the goldens show, asserted so that an -update cannot
// quietly accept a wrong judgement.
func TestJudge(t *testing.T) {
	read := func(name string) *Report {
		t.Helper()
		data, err := os.ReadFile(filepath.Join("testdata", name+".json"))
		if err != nil {
			t.Fatal(err)
		}
		r, err := Parse(data)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if v := read("clean-22.4").Judge(true); v.Fatal != "" || len(v.Warnings) != 0 {
		t.Errorf("clean, strict: %+v", v)
	}
	v := read("locale-22.4").Judge(false)
	if v.Fatal != "" || len(v.Warnings) != 1 || !reflect.DeepEqual(v.Modules, []string{"locale"}) ||
		!strings.Contains(v.Warnings[0], "module locale failed") || !strings.Contains(v.Warnings[0], "No such file or directory: b'locale-gen'") {
		t.Errorf("locale: %+v", v)
	}
	v = read("locale-debian12").Judge(false)
	if v.Fatal != "" || !reflect.DeepEqual(v.Modules, []string{"locale"}) || !strings.Contains(v.Warnings[0], "update-locale") {
		t.Errorf("the Debian guest's locale failure: %+v", v)
	}
	if v := read("locale-22.4").Judge(true); !strings.Contains(v.Fatal, "module locale failed") || v.Warnings != nil {
		t.Errorf("locale, strict: %+v", v)
	}
	v = read("modules-24.1").Judge(false)
	if v.Fatal != "" || !reflect.DeepEqual(v.Modules, []string{"locale", "scripts_user"}) {
		t.Errorf("24.1's modules (recoverable errors are not failures): %+v", v)
	}
	for _, name := range []string{"bootcmd-22.4", "no-datasource-22.4", "stage-exception-22.4"} {
		if v := read(name).Judge(false); v.Fatal == "" || v.Warnings != nil {
			t.Errorf("%s is critical: %+v", name, v)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, in := range []string{"", "{", `{"v2": {}}`, `{"v1": {"datasource": 3}}`} {
		if _, err := Parse([]byte(in)); err == nil {
			t.Errorf("Parse(%q) succeeded", in)
		}
	}
}

func TestSplitError(t *testing.T) {
	for _, c := range []struct{ in, module, msg string }{
		{`('runcmd', RuntimeError('a\tb\\c \'q\' \x41\u00e9'))`, "runcmd", "a\tb\\c 'q' Aé"},
		{`('write_files', TypeError(''))`, "write_files", "TypeError"},
		{`('write_files', TypeError())`, "write_files", "TypeError()"},
		{`('mounts', OSError(2, 'No such file or directory'))`, "mounts", "OSError(2, 'No such file or directory')"},
		{`('x', ValueError('two' 'literals'))`, "x", "ValueError('two' 'literals')"},
		{"No instance datasource found.", "", "No instance datasource found"},
		{"('not a module failure'", "", "('not a module failure'"},
	} {
		module, msg := splitError(c.in)
		if module != c.module || msg != c.msg {
			t.Errorf("splitError(%q) = %q, %q; want %q, %q", c.in, module, msg, c.module, c.msg)
		}
	}
	long := `('m', RuntimeError('` + strings.Repeat("x", 1000) + `'))`
	if _, msg := splitError(long); len([]rune(msg)) != maxMessage || !strings.HasSuffix(msg, "…") {
		t.Errorf("a long message is %d runes", len([]rune(msg)))
	}
}
