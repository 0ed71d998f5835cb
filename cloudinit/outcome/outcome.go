// Package outcome reads cloud-init's own report of a boot (the
// status.json it keeps in /run/cloud-init) and judges it as the users of
// multipass and Lima expect: a guest whose cloud-init finished is usable,
// and a module that failed (say `locale` in an image without the locales
// package) is a warning, not a failure. Only a failure of cloud-init
// itself, one that leaves stack's own setup undone, is fatal: a stage that
// failed outside its modules (no datasource among them), a boot without a
// datasource, or a failed `bootcmd` (stack's hosts, ready report and
// shared directories run there). Strict makes every module failure fatal.
//
// The package is a leaf, imported by the supervisor (which judges the
// report the guest writes on its console) and by the cloudinit package
// (which makes the guest write it).
package outcome

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Failure is one entry of a stage's "errors" list.
type Failure struct {
	Stage string // init-local, init, modules-config, modules-final, ...
	// Module is the cloud-init module that raised ("locale"); "" for a
	// failure of the stage itself ("No instance datasource found.").
	Module string
	// Error is the module's exception, condensed to one line.
	Error string
}

// Critical reports whether f leaves stack's own setup of the guest undone,
// so that the VM fails whatever strict says.
func (f Failure) Critical() bool { return f.Module == "" || f.Module == "bootcmd" }

func (f Failure) String() string {
	if f.Module == "" {
		return fmt.Sprintf("cloud-init stage %s failed: %s", f.Stage, f.Error)
	}
	return fmt.Sprintf("cloud-init module %s failed: %s", f.Module, f.Error)
}

// Report is what cloud-init said about one boot.
type Report struct {
	// Datasource is the datasource cloud-init used ("" when none, as is
	// DataSourceNone, the fallback that means the seed was not found).
	Datasource string
	// Failures in stage order, each stage's in cloud-init's order.
	Failures []Failure
}

// stageOrder is the order cloud-init runs its stages in (modules-init is
// listed by cloud-init but never run).
var stageOrder = []string{"init-local", "init", "modules-init", "modules-config", "modules-final"}

// Parse reads a status.json (cloud-init 22.4 and later, including the
// recoverable_errors of 23.4 and later, which are warnings of cloud-init's
// log and not failures, so not reported).
func Parse(data []byte) (*Report, error) {
	var doc struct {
		V1 map[string]json.RawMessage `json:"v1"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("parse cloud-init status: %w", err)
	}
	if doc.V1 == nil {
		return nil, errors.New("parse cloud-init status: no v1 object")
	}
	r := &Report{}
	if raw, ok := doc.V1["datasource"]; ok {
		var ds *string
		if err := json.Unmarshal(raw, &ds); err != nil {
			return nil, fmt.Errorf("parse cloud-init status: datasource: %w", err)
		}
		if ds != nil && !strings.HasPrefix(*ds, "DataSourceNone") {
			r.Datasource = *ds
		}
	}
	var stages []string
	for k := range doc.V1 {
		if k != "datasource" && k != "stage" {
			stages = append(stages, k)
		}
	}
	slices.SortFunc(stages, func(a, b string) int {
		ia, ib := slices.Index(stageOrder, a), slices.Index(stageOrder, b)
		switch {
		case ia >= 0 && ib >= 0:
			return ia - ib
		case ia >= 0:
			return -1
		case ib >= 0:
			return 1
		}
		return strings.Compare(a, b)
	})
	for _, name := range stages {
		var stage struct {
			Errors []string `json:"errors"`
		}
		// Keys that are not stages (newer versions may add some) have
		// no errors list and are skipped.
		if json.Unmarshal(doc.V1[name], &stage) != nil {
			continue
		}
		for _, e := range stage.Errors {
			module, msg := splitError(e)
			r.Failures = append(r.Failures, Failure{Stage: name, Module: module, Error: msg})
		}
	}
	return r, nil
}

// Verdict is how stack takes a report.
type Verdict struct {
	// Warnings name each failed module and its error, for a VM that is
	// ready all the same.
	Warnings []string
	// Modules are the modules the warnings are about, in their order.
	Modules []string
	// Fatal is why the VM failed; "" when it is ready.
	Fatal string
}

// Judge decides whether the VM the report is of is ready. strict is the
// VM's `cloud_init { strict }`: every failure is fatal.
func (r *Report) Judge(strict bool) Verdict {
	var v Verdict
	var fatal []string
	if r.Datasource == "" {
		fatal = append(fatal, "cloud-init found no datasource (the seed was not read)")
	}
	for _, f := range r.Failures {
		switch {
		case f.Critical():
			fatal = append(fatal, f.String())
		case strict:
			fatal = append(fatal, f.String()+" (cloud_init strict)")
		default:
			v.Warnings = append(v.Warnings, f.String())
			v.Modules = append(v.Modules, f.Module)
		}
	}
	if len(fatal) > 0 {
		v.Fatal = strings.Join(fatal, "; ")
		v.Warnings, v.Modules = nil, nil
	}
	return v
}

// moduleErrorRe is how cloud-init writes a module's failure: the str() of
// the Python tuple (name, exception).
var moduleErrorRe = regexp.MustCompile(`(?s)^\('([A-Za-z0-9_]+)', (.*)\)$`)

// exceptionRe is the repr() of a Python exception: Type(args).
var exceptionRe = regexp.MustCompile(`(?s)^([A-Za-z_][A-Za-z0-9_.]*)\((.*)\)$`)

// splitError takes a stage's error apart into the module that raised
// ("" when the text is not a module's failure) and its message.
func splitError(e string) (module, msg string) {
	e = strings.TrimSpace(e)
	m := moduleErrorRe.FindStringSubmatch(e)
	if m == nil {
		return "", condense(e)
	}
	module, exc := m[1], m[2]
	if x := exceptionRe.FindStringSubmatch(exc); x != nil {
		if s, ok := pyString(x[2]); ok {
			if s = condense(s); s != "" {
				return module, s
			}
			return module, x[1]
		}
	}
	return module, condense(exc)
}

// maxMessage bounds a condensed message, in runes.
const maxMessage = 400

// condense makes one line of a multi-line message: lines without a value
// ("Stdout: -", "Stderr: ") are dropped, the others joined with "; ".
func condense(s string) string {
	var parts []string
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || l == "-" || strings.HasSuffix(l, ": -") || strings.HasSuffix(l, ":") {
			continue
		}
		parts = append(parts, strings.TrimSuffix(l, "."))
	}
	out := strings.Join(parts, "; ")
	if utf8.RuneCountInString(out) > maxMessage {
		out = string([]rune(out)[:maxMessage-1]) + "…"
	}
	return out
}

// pyString reads s as exactly one Python string literal (the repr() of a
// str: single or double quotes, backslash escapes) and returns its value.
func pyString(s string) (string, bool) {
	if len(s) < 2 || (s[0] != '\'' && s[0] != '"') || s[len(s)-1] != s[0] {
		return "", false
	}
	q := s[0]
	body := s[1 : len(s)-1]
	var b strings.Builder
	for i := 0; i < len(body); i++ {
		c := body[i]
		if c == q {
			return "", false // the literal ended early: more than one argument
		}
		if c != '\\' || i+1 == len(body) {
			b.WriteByte(c)
			continue
		}
		i++
		switch e := body[i]; e {
		case 'n':
			b.WriteByte('\n')
		case 't':
			b.WriteByte('\t')
		case 'r':
			b.WriteByte('\r')
		case '\\', '\'', '"':
			b.WriteByte(e)
		case 'x', 'u', 'U':
			n := map[byte]int{'x': 2, 'u': 4, 'U': 8}[e]
			if i+n < len(body) {
				if v, err := strconv.ParseUint(body[i+1:i+1+n], 16, 32); err == nil {
					b.WriteRune(rune(v))
					i += n
					continue
				}
			}
			b.WriteByte('\\')
			b.WriteByte(e)
		default:
			b.WriteByte('\\')
			b.WriteByte(e)
		}
	}
	return b.String(), true
}
