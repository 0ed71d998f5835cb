package planner

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/stackvm/stack/stackfile"
	"github.com/stackvm/stack/state"
)

// Part says what a piece of the rendered plan is. The planner does no
// styling: it gives the plan as lines of parts, String joins them plainly,
// and the CLI colours each part (by its Kind where it has one).
type Part int

const (
	PartText    Part = iota // the opening line
	PartComment             // "  # vm.db will be created"
	// PartHeader is an action's symbol and address ("  + vm.db"); its Kind
	// is the action's.
	PartHeader
	// PartAttribute is an attribute line ("      ~ memory_mb = 512 -> 1024");
	// its Kind is what its symbol stands for: Create (+), Update (~) or
	// Delete (-).
	PartAttribute
	PartNote    // " # forces replacement", at the end of an attribute line
	PartSummary // "Plan: 0 to create, ..."
)

// Segment is a piece of one line of the rendered plan.
type Segment struct {
	Part Part
	Kind Kind // for PartHeader and PartAttribute
	Text string
}

// Line is one line of the rendered plan, without its newline; a blank line
// has no segments.
type Line []Segment

// String renders the plan as plain text, deterministically: golden tests
// compare it byte for byte.
func (p *Plan) String() string {
	var b strings.Builder
	for _, l := range p.Lines() {
		for _, s := range l {
			b.WriteString(s.Text)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// Lines renders the plan with Terraform's symbols, one block per action that
// changes something, and the summary line.
func (p *Plan) Lines() []Line {
	text := func(part Part, s string) Line { return Line{{Part: part, Text: s}} }
	summary := []Line{nil, text(PartSummary, p.Summary())}
	if len(p.LeftOut) > 0 {
		summary = append([]Line{nil, text(PartComment, "Left out (not named, nor needed by what is named): "+strings.Join(p.LeftOut, ", "))}, summary...)
	}
	if !p.HasChanges() {
		return append([]Line{text(PartText, fmt.Sprintf("No changes. Namespace %q matches the stack files.", p.Namespace))}, summary...)
	}
	lines := []Line{text(PartText, fmt.Sprintf("Namespace %q: stack will perform the following actions.", p.Namespace))}
	for _, a := range p.Actions {
		if a.Kind == NoOp {
			continue
		}
		lines = append(lines, nil,
			text(PartComment, "  # "+a.Address+" "+headline(a)),
			Line{{Part: PartHeader, Kind: a.Kind, Text: symbol(a.Kind) + " " + a.Address}})
		lines = append(lines, attrLines(a)...)
	}
	return append(lines, summary...)
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

func symbol(k Kind) string {
	switch k {
	case Create:
		return "  +"
	case Start:
		return "  >"
	case Update:
		return "  ~"
	case Replace:
		return "-/+"
	case Delete:
		return "  -"
	}
	return "   "
}

// attrLines lists an action's attributes: all of them for a creation, the
// changed ones otherwise, their names aligned.
func attrLines(a *Action) []Line {
	type attr struct {
		kind        Kind
		name, value string
		forces      bool
	}
	var attrs []attr
	switch a.Kind {
	case Create:
		for _, name := range sortedKeys(a.After) {
			v := a.After[name]
			if slices.Contains(a.Sensitive, name) {
				v = SensitiveValue
			}
			attrs = append(attrs, attr{Create, name, showValue(v), false})
		}
	case Update, Replace, Start:
		for _, c := range a.Changes {
			at := attr{kind: Update, name: c.Attribute, forces: c.ForcesReplacement && a.Kind == Replace}
			switch {
			case c.Old == nil:
				at.kind, at.value = Create, showValue(c.New)
			case c.New == nil:
				at.kind, at.value = Delete, showValue(c.Old)
			default:
				at.value = showValue(c.Old) + " -> " + showValue(c.New)
			}
			attrs = append(attrs, at)
		}
	}
	width := 0
	for _, at := range attrs {
		width = max(width, len(at.name))
	}
	lines := make([]Line, len(attrs))
	for i, at := range attrs {
		text := fmt.Sprintf("      %s %-*s = %s", strings.TrimSpace(symbol(at.kind)), width, at.name, at.value)
		lines[i] = Line{{Part: PartAttribute, Kind: at.kind, Text: text}}
		if at.forces {
			lines[i] = append(lines[i], Segment{Part: PartNote, Text: " # forces replacement"})
		}
	}
	return lines
}

func compact(raw json.RawMessage) string {
	if raw == nil {
		return "null"
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return string(raw)
	}
	return string(unescapeHTML(buf.Bytes()))
}

// unescapeHTML undoes the escaping of <, > and & that encoding/json does by
// default: attribute values are recorded with json.Marshal, which writes
// them as \u003c, \u003e and \u0026, and a plan should show a command such
// as `echo a >> /f && cat < /f` as it was written. The result is the same
// JSON value, as an encoder with SetEscapeHTML(false) writes it. data must
// be valid JSON, where a backslash only occurs inside strings.
func unescapeHTML(data []byte) []byte {
	if !bytes.Contains(data, []byte(`\u00`)) {
		return data
	}
	out := make([]byte, 0, len(data))
	for i := 0; i < len(data); i++ {
		if data[i] != '\\' || i+1 == len(data) {
			out = append(out, data[i])
			continue
		}
		if data[i+1] == 'u' && i+6 <= len(data) {
			if c, ok := htmlEscapes[strings.ToLower(string(data[i+2:i+6]))]; ok {
				out = append(out, c)
				i += 5
				continue
			}
		}
		out = append(out, data[i], data[i+1]) // any other escape, \\ included
		i++
	}
	return out
}

var htmlEscapes = map[string]byte{"003c": '<', "003e": '>', "0026": '&'}

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
	// Sensitive names the attributes of After that are masked (plan
	// --json) or sealed (a saved plan).
	Sensitive []string `json:"sensitive,omitempty"`
}

type jsonPlan struct {
	FormatVersion string              `json:"format_version"`
	Namespace     string              `json:"namespace"`
	Actions       []jsonAction        `json:"actions"`
	Barriers      map[string][]string `json:"barriers,omitempty"`
	LeftOut       []string            `json:"left_out,omitempty"`
	Summary       Counts              `json:"summary"`
}

// jsonActions gives the actions with each After as after returns it
// (masked or sealed).
func (p *Plan) jsonActions(after func(*Action) state.Attributes) []jsonAction {
	out := make([]jsonAction, len(p.Actions))
	for i, a := range p.Actions {
		out[i] = jsonAction{a.Address, a.Type, a.Name, a.Kind, a.Reason, a.Detail, a.Changes, a.DependsOn, after(a), a.Sensitive}
	}
	return out
}

// MarshalJSON gives the `plan --json` document: {"format_version": "1",
// "actions": [...]} with every action, no-ops included. <, > and & are not
// escaped, in attribute values either; encode it with SetEscapeHTML(false)
// to keep them so.
func (p *Plan) MarshalJSON() ([]byte, error) {
	data, err := json.Marshal(jsonPlan{JSONFormatVersion, p.Namespace, p.jsonActions(maskedAfter), p.Barriers, p.LeftOut, p.Counts()})
	return unescapeHTML(data), err
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
	LeftOut       []string               `json:"left_out,omitempty"`
}

// ErrStalePlan is returned when a saved plan no longer matches the state.
var ErrStalePlan = errors.New("saved plan is stale")

// Save encodes the plan with the stack it was made from. Sensitive values
// are left out of the stack and sealed in the actions: LoadSaved takes
// them from the files again.
func (p *Plan) Save(desired *stackfile.Stack) ([]byte, error) {
	sealed := func(a *Action) state.Attributes { return sealedAfter(a, nil) }
	data, err := json.MarshalIndent(Saved{JSONFormatVersion, p.Namespace, p.StateSerial, p.StateLineage, savedStack(desired), p.jsonActions(sealed), p.Barriers, p.NICs, p.LeftOut}, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode saved plan: %w", err)
	}
	return append(data, '\n'), nil
}

// LoadSaved decodes a saved plan and checks it against the current state:
// a plan made against another serial or lineage is refused as stale. fresh
// is the stack files loaded now: the saved plan's sensitive values come
// from it, and the plan is stale when they are not the ones it was made
// with (fresh may be nil for a plan without sensitive values).
func LoadSaved(data []byte, current *state.State, fresh *stackfile.Stack) (*Plan, *stackfile.Stack, error) {
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
	p := &Plan{Namespace: s.Namespace, NICs: s.NICs, Barriers: s.Barriers, LeftOut: s.LeftOut, StateSerial: s.StateSerial, StateLineage: s.StateLineage}
	for _, a := range s.Actions {
		p.Actions = append(p.Actions, &Action{Address: a.Address, Type: a.Type, Name: a.Name, Kind: a.Action, Reason: a.Reason,
			Detail: a.Detail, Changes: a.Changes, DependsOn: a.DependsOn, After: a.After, Sensitive: a.Sensitive})
	}
	if err := restoreSensitive(p, s.Stack, fresh); err != nil {
		return nil, nil, err
	}
	return p, s.Stack, nil
}
