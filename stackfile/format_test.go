package stackfile

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFormat(t *testing.T) {
	for _, name := range []string{"messy", "canonical"} {
		t.Run(name, func(t *testing.T) {
			in := filepath.Join("testdata/format", name+".hcl")
			src, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			out, diags := Format(src, in)
			if diags.HasErrors() {
				t.Fatalf("Format: %s", diags.Error())
			}
			checkGolden(t, filepath.Join("testdata/format", name+".golden"), out)
			again, diags := Format(out, in)
			if diags.HasErrors() || !bytes.Equal(again, out) {
				t.Errorf("Format is not idempotent:\n%s\n---\n%s", out, again)
			}
		})
	}
	t.Run("canonical unchanged", func(t *testing.T) {
		src, err := os.ReadFile("testdata/format/canonical.hcl")
		if err != nil {
			t.Fatal(err)
		}
		if out, _ := Format(src, "canonical.hcl"); !bytes.Equal(out, src) {
			t.Errorf("canonical input changed:\n%s", out)
		}
	})
	t.Run("syntax error", func(t *testing.T) {
		src, err := os.ReadFile("testdata/format/broken.hcl")
		if err != nil {
			t.Fatal(err)
		}
		out, diags := Format(src, "broken.hcl")
		if out != nil {
			t.Errorf("Format returned output for broken input:\n%s", out)
		}
		if !diags.HasErrors() || diags[0].Subject == nil || diags[0].Subject.Filename != "broken.hcl" || diags[0].Subject.Start.Line != 2 {
			t.Errorf("want a syntax error at broken.hcl:2, got %v", diags)
		}
	})
}

// TestFormatExamples keeps the shipped examples canonically formatted.
func TestFormatExamples(t *testing.T) {
	files, _ := filepath.Glob("../examples/stacks/*.hcl")
	valid, _ := filepath.Glob("testdata/valid/*.hcl")
	for _, f := range append(files, valid...) {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out, diags := Format(src, f)
		if diags.HasErrors() {
			t.Errorf("%s: %s", f, diags.Error())
		} else if !bytes.Equal(out, src) {
			t.Errorf("%s is not canonically formatted; run stack fmt on it", strings.TrimPrefix(f, "../"))
		}
	}
}
