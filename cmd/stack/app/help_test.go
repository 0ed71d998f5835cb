package app

import (
	"bytes"
	"context"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// commands is every command of the tree under root, root included.
func commands(root *cobra.Command) []*cobra.Command {
	out := []*cobra.Command{root}
	for _, c := range root.Commands() {
		if c.Name() == "help" || c.Name() == "completion" {
			continue
		}
		out = append(out, commands(c)...)
	}
	return out
}

// TestHelpValueNames renders every command's --help and checks each flag's
// line: pflag takes a back-quoted word of a flag's description as its value
// name (`--out stack up --plan FILE`), so no description may hold one, and
// the value name shown must be the flag's type, never a word of its
// description. A flag shows one default at most (`(default all) (default
// -1)` was the bug).
func TestHelpValueNames(t *testing.T) {
	root := newRoot(Streams{In: strings.NewReader(""), Out: &bytes.Buffer{}, Err: &bytes.Buffer{}})
	root.InitDefaultHelpFlag()
	for _, c := range commands(root) {
		path := strings.Fields(c.CommandPath())[1:]
		var out bytes.Buffer
		if err := Run(context.Background(), Streams{In: strings.NewReader(""), Out: &out, Err: &out}, append(path, "--help")); err != nil {
			t.Fatalf("%s --help: %v", c.CommandPath(), err)
		}
		help := out.String()
		c.InitDefaultHelpFlag()
		seen := 0
		visit := func(f *pflag.Flag) {
			if f.Hidden {
				return
			}
			seen++
			name, usage := pflag.UnquoteUsage(f)
			if strings.Contains(f.Usage, "`") {
				t.Errorf("%s --%s: the description %q has a back-quote, which pflag takes as the value name", c.CommandPath(), f.Name, f.Usage)
			}
			if name != "" && slices.Contains(strings.Fields(usage), name) {
				t.Errorf("%s --%s: value name %q is a word of its description %q", c.CommandPath(), f.Name, name, usage)
			}
			line := regexp.MustCompile(`(?m)^ +(-\w, )?--` + regexp.QuoteMeta(f.Name) + `\b.*$`).FindString(help)
			if line == "" {
				t.Errorf("%s --help does not show --%s:\n%s", c.CommandPath(), f.Name, help)
				return
			}
			if want := strings.TrimSpace("--" + f.Name + " " + name); !strings.Contains(line, want+" ") {
				t.Errorf("%s --help: the line of --%s is %q, want it to start with %q", c.CommandPath(), f.Name, line, want)
			}
			if n := strings.Count(line, "(default"); n > 1 {
				t.Errorf("%s --help: --%s shows %d defaults: %q", c.CommandPath(), f.Name, n, line)
			}
		}
		c.LocalFlags().VisitAll(visit)
		c.InheritedFlags().VisitAll(visit)
		if seen == 0 {
			t.Errorf("%s: no flags seen", c.CommandPath())
		}
	}
}

func TestTailFlag(t *testing.T) {
	var v tailValue = -1
	if v.String() != "all" {
		t.Errorf("default --tail shows as %q, want all", v.String())
	}
	for in, want := range map[string]tailValue{"0": 0, "25": 25, "all": -1} {
		if err := v.Set(in); err != nil || v != want {
			t.Errorf("--tail %s: %d, %v; want %d", in, v, err, want)
		}
	}
	for _, in := range []string{"-2", "x", ""} {
		if err := v.Set(in); err == nil {
			t.Errorf("--tail %q accepted", in)
		}
	}
}
