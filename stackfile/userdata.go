package stackfile

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/hashicorp/hcl/v2"

	"github.com/stackvm/stack/cloudinit"
)

// checkUserData reports at load time what seed generation would refuse in
// a VM's user_data (YAML that cloud-init cannot use) or override (keys
// stack owns), so that `stack validate` finds it, not `stack up`.
func (l *loader) checkUserData(a *hcl.Attribute, src, vmName string) {
	if src == "" {
		return
	}
	warnings, err := cloudinit.CheckUserData(src, vmName, l.ns)
	var ue *cloudinit.UserDataError
	if err != nil && !errors.As(err, &ue) {
		ue = &cloudinit.UserDataError{Msg: err.Error()}
	}
	// The YAML parser's messages may quote the document.
	hide := l.sensitive[a]
	if ue != nil {
		rng := l.userDataLine(a, ue.Line)
		l.add(&hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid user_data", Detail: userDataDetail(ue, hide), Subject: &rng})
	}
	for _, w := range warnings {
		rng := l.userDataLine(a, w.Line)
		l.add(&hcl.Diagnostic{Severity: hcl.DiagWarning, Summary: "user_data value overridden", Detail: userDataDetail(&w, hide), Subject: &rng})
	}
}

// userDataDetail describes a problem of the user data; hide leaves out
// the message, which may quote a document that holds a sensitive value.
func userDataDetail(e *cloudinit.UserDataError, hide bool) string {
	if hide {
		where := "The user data"
		if e.Line > 0 {
			where = fmt.Sprintf("Line %d of the user data", e.Line)
		}
		return where + " is not valid or sets a value stack owns; the message is not shown because the user data holds a sensitive value."
	}
	if e.Line > 0 {
		return fmt.Sprintf("Line %d of the user data: %s.", e.Line, e.Msg)
	}
	return e.Msg + "."
}

// userDataLine is where line n of a user_data document is in the stack
// file: that very line when the document is a heredoc written in place
// (user_data = <<-EOT ... EOT) without interpolations before it, else the
// attribute's expression.
func (l *loader) userDataLine(a *hcl.Attribute, n int) hcl.Range {
	rng := a.Expr.Range()
	f := l.sources.Files()[rng.Filename]
	if n <= 0 || f == nil || rng.End.Byte > len(f.Bytes) {
		return rng
	}
	expr := f.Bytes[rng.Start.Byte:rng.End.Byte]
	if !bytes.HasPrefix(expr, []byte("<<")) {
		return rng
	}
	// The document starts on the line after the heredoc's opening marker.
	lines := bytes.SplitAfter(expr, []byte("\n"))
	if n >= len(lines)-1 || bytes.Contains(bytes.Join(lines[:n+1], nil), []byte("${")) {
		return rng
	}
	start := rng.Start.Byte
	for _, ln := range lines[:n] {
		start += len(ln)
	}
	text := bytes.TrimRight(lines[n], "\r\n")
	pos := func(col int) hcl.Pos {
		return hcl.Pos{Line: rng.Start.Line + n, Column: col + 1, Byte: start + col}
	}
	indent := len(text) - len(bytes.TrimLeft(text, " \t"))
	return hcl.Range{Filename: rng.Filename, Start: pos(indent), End: pos(len(text))}
}
