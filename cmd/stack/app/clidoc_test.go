package app

import (
	"bytes"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// section is the part of docs/cli.md under the heading "## name", or the
// part before the first heading for name "".
func section(doc, name string) string {
	parts := regexp.MustCompile(`(?m)^## `).Split(doc, -1)
	if name == "" {
		return parts[0]
	}
	for _, p := range parts[1:] {
		if head, body, _ := strings.Cut(p, "\n"); strings.TrimSpace(head) == name {
			return body
		}
	}
	return ""
}

// TestCLIDocNamesEveryFlag checks that every flag cobra knows is in
// docs/cli.md: the global flags in the table at its top, every other flag
// (and its shorthand) in the section of its top-level command.
func TestCLIDocNamesEveryFlag(t *testing.T) {
	raw, err := os.ReadFile("../../../docs/cli.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	root := newRoot(Streams{In: strings.NewReader(""), Out: &bytes.Buffer{}, Err: &bytes.Buffer{}})
	check := func(where, text string, f *pflag.Flag) {
		if f.Name == "help" {
			return
		}
		if !regexp.MustCompile(`(^|[^\w-])--` + regexp.QuoteMeta(f.Name) + `\b`).MatchString(text) {
			t.Errorf("docs/cli.md, %s: --%s is not documented", where, f.Name)
		}
		if f.Shorthand != "" && !regexp.MustCompile(`(^|[^\w-])-`+regexp.QuoteMeta(f.Shorthand)+`\b`).MatchString(text) {
			t.Errorf("docs/cli.md, %s: -%s (--%s) is not documented", where, f.Shorthand, f.Name)
		}
	}
	root.PersistentFlags().VisitAll(func(f *pflag.Flag) { check("the common flags", section(doc, ""), f) })
	for _, c := range commands(root)[1:] {
		top := strings.Fields(c.CommandPath())[1]
		text := section(doc, top)
		if text == "" {
			t.Errorf("docs/cli.md has no section ## %s", top)
			continue
		}
		c.LocalNonPersistentFlags().VisitAll(func(f *pflag.Flag) { check(c.CommandPath(), text, f) })
	}
}
