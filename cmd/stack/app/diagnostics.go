package app

import (
	"io"

	"github.com/hashicorp/hcl/v2"

	"github.com/stackvm/stack"
)

// load loads the stack files and renders any diagnostics to stderr, with
// file:line:col and a source snippet. It fails when there are errors.
func load(g *globals, s Streams) (*stack.Project, error) {
	p, diags := stack.Load(g.options())
	if len(diags) > 0 {
		writeDiagnostics(s.Err, p, diags)
	}
	if diags.HasErrors() {
		return nil, errReported
	}
	return p, nil
}

func writeDiagnostics(w io.Writer, p *stack.Project, diags hcl.Diagnostics) {
	if p == nil || p.Sources == nil {
		for _, d := range diags {
			io.WriteString(w, d.Error()+"\n")
		}
		return
	}
	if err := p.Sources.WriteDiagnostics(w, diags, colorEnabled(w), termWidth(w)); err != nil {
		for _, d := range diags {
			io.WriteString(w, d.Error()+"\n")
		}
	}
}

// jsonDiagnostic is one diagnostic as `validate --json` prints it.
type jsonDiagnostic struct {
	Severity string `json:"severity"`
	Summary  string `json:"summary"`
	Detail   string `json:"detail"`
	Filename string `json:"filename"`
	Line     int    `json:"line"`
	Column   int    `json:"column"`
}

func toJSONDiagnostics(diags hcl.Diagnostics) []jsonDiagnostic {
	out := make([]jsonDiagnostic, 0, len(diags))
	for _, d := range diags {
		j := jsonDiagnostic{Severity: "error", Summary: d.Summary, Detail: d.Detail}
		if d.Severity == hcl.DiagWarning {
			j.Severity = "warning"
		}
		if d.Subject != nil {
			j.Filename, j.Line, j.Column = d.Subject.Filename, d.Subject.Start.Line, d.Subject.Start.Column
		}
		out = append(out, j)
	}
	return out
}
