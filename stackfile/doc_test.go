package stackfile

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// docAttributes are the attribute names of the tables of docs/stackfile.md
// whose first column is "attribute" (`egress { allow = [...] }` counts as
// egress), and the blocks its headings and bold block titles name.
func docAttributes(t *testing.T, doc string) (attrs, blocks []string) {
	t.Helper()
	inTable := false
	row := regexp.MustCompile("^\\| `([a-z_]+)`?( block)?")
	for _, line := range strings.Split(doc, "\n") {
		switch {
		case strings.HasPrefix(line, "| attribute |"):
			inTable = true
		case !strings.HasPrefix(line, "|"):
			inTable = false
		case inTable:
			if m := row.FindStringSubmatch(line); m != nil && m[2] != "" && !slices.Contains(blocks, m[1]) {
				blocks = append(blocks, m[1]) // | `validation` block |
			} else if m != nil && m[2] == "" && !slices.Contains(attrs, m[1]) {
				attrs = append(attrs, m[1])
			}
		}
	}
	for _, m := range regexp.MustCompile("(?m)^(?:### `([a-z_]+)[ `]|\\*\\*`([a-z_]+) [\"{])").FindAllStringSubmatch(doc, -1) {
		if b := m[1] + m[2]; !slices.Contains(blocks, b) {
			blocks = append(blocks, b)
		}
	}
	if len(attrs) < 40 || len(blocks) < 10 {
		t.Fatalf("read %d attributes and %d blocks from docs/stackfile.md; its tables changed shape?", len(attrs), len(blocks))
	}
	return attrs, blocks
}

// TestEveryDocumentedAttributeIsTested checks that each attribute and block
// docs/stackfile.md documents is set somewhere a test loads it: an HCL file
// under a testdata directory or examples/ (the loader's golden and invalid
// files, the e2e stacks, the examples every test loads), or HCL inside a Go
// test. It proves that a test uses the attribute, not what that test
// asserts about it; it fails when an attribute is documented and no test
// writes it. (In a Go string, a line may start after a "\n" escape.)
func TestEveryDocumentedAttributeIsTested(t *testing.T) {
	raw, err := os.ReadFile("../docs/stackfile.md")
	if err != nil {
		t.Fatal(err)
	}
	attrs, blocks := docAttributes(t, string(raw))
	var corpus strings.Builder
	err = filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if strings.HasPrefix(d.Name(), ".") && path != ".." {
				return filepath.SkipDir
			}
			return nil
		}
		slash := filepath.ToSlash(path)
		tested := strings.HasSuffix(path, "_test.go") ||
			(strings.HasSuffix(path, ".hcl") && (strings.Contains(slash, "/testdata/") || strings.HasPrefix(slash, "../examples/")))
		if !tested {
			return nil
		}
		b, err := os.ReadFile(path)
		corpus.Write(b)
		corpus.WriteByte('\n')
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	text := corpus.String()
	for _, a := range attrs {
		if !regexp.MustCompile(`(?m)(^|[{,]|\\n)\s*` + a + `\s*=`).MatchString(text) {
			t.Errorf("docs/stackfile.md documents the attribute %s, and no test file or test stack sets it", a)
		}
	}
	for _, b := range blocks {
		if !regexp.MustCompile(`(?m)^\s*` + b + `\s*("[^"]*"\s*)*\{`).MatchString(text) {
			t.Errorf("docs/stackfile.md documents the block %s, and no test file or test stack has one", b)
		}
	}
	t.Logf("attributes: %v; blocks: %v", attrs, blocks)
}
