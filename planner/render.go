package planner

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/stackvm/stack/stackfile"
	"github.com/stackvm/stack/state"
)

// Styles colours parts of the rendered plan. A nil func leaves its text
// plain; the CLI fills them with lipgloss styles on a TTY.
type Styles struct {
	Create, Start, Update, Replace, Delete, Comment func(string) string
}

func apply(f func(string) string, s string) string {
	if f == nil {
		return s
	}
	return f(s)
}

// String renders the plan as plain text, deterministically: golden tests
// compare it byte for byte.
func (p *Plan) String() string { return p.Render(Styles{}) }

// Render renders the plan with Terraform's symbols, one block per action
// that changes something, and the summary line.
func (p *Plan) Render(s Styles) string {
	var b strings.Builder
	if !p.HasChanges() {
		fmt.Fprintf(&b, "No changes. Namespace %q matches the stack files.\n\n", p.Namespace)
		b.WriteString(p.Summary() + "\n")
		return b.String()
	}
	fmt.Fprintf(&b, "Namespace %q: stack will perform the following actions.\n", p.Namespace)
	for _, a := range p.Actions {
		if a.Kind == NoOp {
			continue
		}
		b.WriteString("\n")
		b.WriteString(apply(s.Comment, "  # "+a.Address+" "+headline(a)) + "\n")
		sym, style := symbol(a.Kind, s)
		b.WriteString(apply(style, sym+" "+a.Address) + "\n")
		writeAttrs(&b, a, s)
	}
	b.WriteString("\n" + p.Summary() + "\n")
	return b.String()
}

// Summary is the closing line: "Plan: N to create, N to update, ...".
// "N to start" appears only when the plan starts stopped VMs.
func (p *Plan) Summary() string {
	c := p.Counts()
	start := ""
	if c.Start > 0 {
		start = fmt.Sprintf("%d to start, ", c.Start)
	}
	return fmt.Sprintf("Plan: %d to create, %s%d to update, %d to replace, %d to delete.", c.Create, start, c.Update, c.Replace, c.Delete)
}

func headline(a *Action) string {
	switch {
	case a.Kind == Create:
		return "will be created"
	case a.Kind == Update:
		return "will be updated in place"
	case a.Kind == Start && len(a.Changes) > 0:
		return "will be updated in place and started: " + a.Detail
	case a.Kind == Start:
		return "will be started: " + a.Detail
	case a.Kind == Replace && a.Reason == ReasonDrift:
		return "must be replaced: " + a.Detail
	case a.Kind == Replace:
		var forced []string
		for _, c := range a.Changes {
			if c.ForcesReplacement {
				forced = append(forced, c.Attribute)
			}
		}
		return "must be replaced: " + strings.Join(forced, ", ") + " forces replacement"
	case a.Kind == Delete:
		return "will be deleted: no longer in the stack files"
	}
	return ""
}

func symbol(k Kind, s Styles) (string, func(string) string) {
	switch k {
	case Create:
		return "  +", s.Create
	case Start:
		return "  >", s.Start
	case Update:
		return "  ~", s.Update
	case Replace:
		return "-/+", s.Replace
	case Delete:
		return "  -", s.Delete
	}
	return "   ", nil
}

func writeAttrs(b *strings.Builder, a *Action, s Styles) {
	type line struct{ sym, name, value, note string }
	var lines []line
	switch a.Kind {
	case Create:
		for _, name := range sortedKeys(a.After) {
			lines = append(lines, line{"+", name, compact(a.After[name]), ""})
		}
	case Update, Replace, Start:
		for _, c := range a.Changes {
			l := line{sym: "~", name: c.Attribute}
			switch {
			case c.Old == nil:
				l.sym, l.value = "+", compact(c.New)
			case c.New == nil:
				l.sym, l.value = "-", compact(c.Old)
			default:
				l.value = compact(c.Old) + " -> " + compact(c.New)
			}
			if c.ForcesReplacement && a.Kind == Replace {
				l.note = " # forces replacement"
			}
			lines = append(lines, l)
		}
	}
	width := 0
	for _, l := range lines {
		width = max(width, len(l.name))
	}
	for _, l := range lines {
		text := fmt.Sprintf("      %s %-*s = %s", l.sym, width, l.name, l.value)
		b.WriteString(text + apply(s.Comment, l.note) + "\n")
	}
}

func compact(raw json.RawMessage) string {
	if raw == nil {
		return "null"
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return string(raw)
	}
	return buf.String()
}

// JSONFormatVersion is the format_version of `plan --json` and saved plans.
const JSONFormatVersion = "1"

// jsonAction is an action as `plan --json` prints it.
type jsonAction struct {
	Address   string           `json:"address"`
	Type      string           `json:"type"`
	Name      string           `json:"name"`
	Action    Kind             `json:"action"`
	Reason    Reason           `json:"reason"`
	Detail    string           `json:"detail,omitempty"`
	Changes   []Change         `json:"changes"`
	DependsOn []string         `json:"depends_on,omitempty"`
	After     state.Attributes `json:"after,omitempty"`
}

type jsonPlan struct {
	FormatVersion string              `json:"format_version"`
	Namespace     string              `json:"namespace"`
	Actions       []jsonAction        `json:"actions"`
	Barriers      map[string][]string `json:"barriers,omitempty"`
	Summary       Counts              `json:"summary"`
}

func (p *Plan) jsonActions() []jsonAction {
	out := make([]jsonAction, len(p.Actions))
	for i, a := range p.Actions {
		out[i] = jsonAction{a.Address, a.Type, a.Name, a.Kind, a.Reason, a.Detail, a.Changes, a.DependsOn, a.After}
	}
	return out
}

// MarshalJSON gives the `plan --json` document: {"format_version": "1",
// "actions": [...]} with every action, no-ops included.
func (p *Plan) MarshalJSON() ([]byte, error) {
	return json.Marshal(jsonPlan{JSONFormatVersion, p.Namespace, p.jsonActions(), p.Barriers, p.Counts()})
}

// Counts is also part of the JSON output.
func (c Counts) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]int{"create": c.Create, "start": c.Start, "update": c.Update, "replace": c.Replace, "delete": c.Delete})
}

// Saved is a plan written by `plan --out FILE` for `up --plan FILE`: the
// actions together with the exact desired stack they were made from and the
// state they were made against.
type Saved struct {
	FormatVersion string                 `json:"format_version"`
	Namespace     string                 `json:"namespace"`
	StateSerial   uint64                 `json:"state_serial"`
	StateLineage  string                 `json:"state_lineage"`
	Stack         *stackfile.Stack       `json:"stack"`
	Actions       []jsonAction           `json:"actions"`
	Barriers      map[string][]string    `json:"barriers,omitempty"`
	NICs          map[string][]state.NIC `json:"nics"`
}

// ErrStalePlan is returned when a saved plan no longer matches the state.
var ErrStalePlan = errors.New("saved plan is stale")

// Save encodes the plan with the stack it was made from.
func (p *Plan) Save(desired *stackfile.Stack) ([]byte, error) {
	data, err := json.MarshalIndent(Saved{JSONFormatVersion, p.Namespace, p.StateSerial, p.StateLineage, desired, p.jsonActions(), p.Barriers, p.NICs}, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode saved plan: %w", err)
	}
	return append(data, '\n'), nil
}

// LoadSaved decodes a saved plan and checks it against the current state:
// a plan made against another serial or lineage is refused as stale.
func LoadSaved(data []byte, current *state.State) (*Plan, *stackfile.Stack, error) {
	var s Saved
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, nil, fmt.Errorf("read saved plan: %w", err)
	}
	if s.FormatVersion != JSONFormatVersion || s.Stack == nil {
		return nil, nil, fmt.Errorf("read saved plan: not a stack plan of format %s", JSONFormatVersion)
	}
	if s.Namespace != current.Namespace {
		return nil, nil, fmt.Errorf("saved plan is for namespace %q, not %q", s.Namespace, current.Namespace)
	}
	if s.StateSerial != current.Serial || s.StateLineage != current.Lineage {
		return nil, nil, fmt.Errorf("%w: it was made against state serial %d (lineage %.8s), the state is now at serial %d (lineage %.8s); run `stack plan` again",
			ErrStalePlan, s.StateSerial, s.StateLineage, current.Serial, current.Lineage)
	}
	p := &Plan{Namespace: s.Namespace, NICs: s.NICs, Barriers: s.Barriers, StateSerial: s.StateSerial, StateLineage: s.StateLineage}
	for _, a := range s.Actions {
		p.Actions = append(p.Actions, &Action{Address: a.Address, Type: a.Type, Name: a.Name, Kind: a.Action, Reason: a.Reason,
			Detail: a.Detail, Changes: a.Changes, DependsOn: a.DependsOn, After: a.After})
	}
	return p, s.Stack, nil
}
