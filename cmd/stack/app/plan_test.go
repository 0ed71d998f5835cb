package app

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/charmbracelet/lipgloss"
	"github.com/muesli/termenv"

	"github.com/stackvm/stack/planner"
	"github.com/stackvm/stack/state"
)

var ansi = regexp.MustCompile("\x1b\\[[0-9;]*m")

// On a terminal the plan is its plain text with colours added: the same
// bytes once the escapes are taken out, each part in its colour.
func TestStyledPlanIsThePlainPlanColoured(t *testing.T) {
	plan := &planner.Plan{Namespace: "demo", Actions: []*planner.Action{
		{Address: "vm.db", Kind: planner.Replace, Reason: planner.ReasonChanged, Changes: []planner.Change{
			{Attribute: "memory_mb", Old: json.RawMessage("512"), New: json.RawMessage("1024"), ForcesReplacement: true}}},
		{Address: "vm.web[0]", Kind: planner.Create, Reason: planner.ReasonNew,
			After: state.Attributes{"cpus": json.RawMessage("1")}},
		{Address: "vm.web[1]", Kind: planner.NoOp, Reason: planner.ReasonUnchanged},
	}}
	r := lipgloss.NewRenderer(&bytes.Buffer{})
	r.SetColorProfile(termenv.ANSI)
	got := styledPlan(plan, r)
	if plain := ansi.ReplaceAllString(got, ""); plain != plan.String() {
		t.Fatalf("styled plan without colours differs from the plain plan:\n--- styled\n%s\n--- plain\n%s", plain, plan.String())
	}
	for _, want := range []string{
		"\x1b[90m  # vm.db must be replaced: memory_mb forces replacement\x1b[0m\n",
		"\x1b[35m-/+ vm.db\x1b[0m\n",
		"~ memory_mb = 512 -> 1024\x1b[90m # forces replacement\x1b[0m\n",
		"\x1b[32m  + vm.web[0]\x1b[0m\n",
		"\nPlan: 1 to create, 0 to update, 1 to replace, 0 to delete.\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("styled plan lacks %q:\n%s", want, got)
		}
	}
}

// A command with <, > and & is shown as written in the text plan and in
// `plan --json`, not as \u003c, \u003e and \u0026.
func TestPlanDoesNotEscapeHTML(t *testing.T) {
	dir := writeStack(t, strings.Replace(stackHCL, `["httpd", "-f", "-p", "80"]`, `["sh", "-c", "echo a >> /f && cat < /f"]`, 1))
	sd := "--state-dir=" + t.TempDir()
	for _, args := range [][]string{{"plan", sd}, {"plan", "--json", sd}} {
		r := run(t, dir, args...)
		if r.code != 0 || !strings.Contains(r.stdout, `"echo a >> /f && cat < /f"`) || strings.Contains(r.stdout, `\u00`) {
			t.Fatalf("%v: %+v", args, r)
		}
	}
	var p struct {
		Actions []struct {
			After struct{ Command []string } `json:"after"`
		} `json:"actions"`
	}
	r := run(t, dir, "plan", "--json", sd)
	if err := json.Unmarshal([]byte(r.stdout), &p); err != nil {
		t.Fatalf("plan --json output: %v", err)
	}
	if got := p.Actions[1].After.Command; len(got) != 3 || got[2] != "echo a >> /f && cat < /f" {
		t.Fatalf("plan --json: vm.web[0] command %q", got)
	}
}
