package stackfile

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/internal/netaddr"
	"github.com/zclconf/go-cty/cty"
)

// DefaultFile is the stack file read when Options.Files is empty.
const DefaultFile = "stack.hcl"

// Options say which files to load and with which variable values.
type Options struct {
	Files     []string // -f files in order; empty means "stack.hcl" in Dir
	Dir       string   // working directory ("" = os.Getwd)
	Namespace string   // -p; overrides the stack label and the directory name
	Vars      []string // --var K=V, in order (later wins)
	VarFiles  []string // --var-file F (HCL files of name = value)
	Environ   []string // for STACK_VAR_<name>; nil means os.Environ()
	// Private are the directories stack keeps its own files in (the state
	// and runtime roots): a shared_dir that is one, lies inside one or
	// contains one gets a warning, as a system directory does.
	Private []string
}

// Sources keeps every parsed file (stack files, var files and the synthetic
// files holding --var and STACK_VAR_ values) so that diagnostics can be
// rendered with source snippets.
type Sources struct {
	files map[string]*hcl.File
}

// Files returns the parsed files by name; callers must not modify it.
func (s *Sources) Files() map[string]*hcl.File {
	if s == nil {
		return nil
	}
	return s.files
}

// WriteDiagnostics renders diags as text with file:line:col and snippets.
func (s *Sources) WriteDiagnostics(w io.Writer, diags hcl.Diagnostics, color bool, width uint) error {
	if err := hcl.NewDiagnosticTextWriter(w, s.Files(), width, color).WriteDiagnostics(diags); err != nil {
		return fmt.Errorf("write diagnostics: %w", err)
	}
	return nil
}

// IsDNSLabel reports whether s can name a namespace, VM, network or volume
// (filenames.IsDNSLabel: one rule for names and the paths built on them).
func IsDNSLabel(s string) bool { return filenames.IsDNSLabel(s) }

// file is one loaded stack file.
type file struct {
	path string // absolute
	dir  string
	ctx  *hcl.EvalContext
}

// decl is one named top-level block.
type decl struct {
	name    string
	block   *hcl.Block
	content *hcl.BodyContent
	file    *file
}

type loader struct {
	opts    Options
	dir     string
	sources *Sources
	diags   hcl.Diagnostics
	seen    map[diagKey]bool

	files         []*file
	root          string
	ns            string // the namespace, once resolved
	accel         string // every VM's default accel (accelDefault)
	accelOnce     sync.Once
	templates     bool // every VM's default template (templatesDefault)
	templatesOnce sync.Once
	vars          map[string]cty.Value // shared by every file's EvalContext
	stackDcl      *decl

	variables map[string]*variable
	varOrder  []string
	failedVar map[string]bool

	localAttrs  map[string]*localDecl
	localVals   map[string]cty.Value
	localState  map[string]int
	failedLocal map[string]bool

	networks     map[string]*decl
	netOrder     []string
	netModels    map[string]*Network
	volumes      map[string]*decl
	volOrder     []string
	volModels    map[string]*Volume
	vms          map[string]*decl
	vmOrder      []string
	badAttrs     map[*hcl.Attribute]bool
	checkedAttrs map[*hcl.Attribute]bool
	invariant    map[*hcl.Attribute]bool
	evalCache    map[*hcl.Attribute]cachedVal
	// sensitive holds the attributes whose value derives from a sensitive
	// variable; sensitiveOK those that may hold one (see sensitive.go).
	sensitive   map[*hcl.Attribute]bool
	sensitiveOK map[*hcl.Attribute]bool
	ipOwner     map[ipKey]string
	macOwner    map[netaddr.MAC]string
	portOwner   map[portKey]string
	volOwner    map[string]string
	statCache   map[string]statResult
	vmDepends   map[string][]string
	dependsRng  map[string]hcl.Range
}

type diagKey struct {
	summary string
	rng     hcl.Range
}

type statResult struct {
	isDir bool
	err   error
}

type localDecl struct {
	attr *hcl.Attribute
	file *file
}

// Load reads, evaluates and checks the stack files. The Stack is nil when
// diags has errors; Sources is never nil, so diagnostics can always be
// rendered.
func Load(opts Options) (*Stack, *Sources, hcl.Diagnostics) {
	l := &loader{
		opts:         opts,
		sources:      &Sources{files: map[string]*hcl.File{}},
		seen:         map[diagKey]bool{},
		vars:         map[string]cty.Value{},
		variables:    map[string]*variable{},
		failedVar:    map[string]bool{},
		localAttrs:   map[string]*localDecl{},
		localVals:    map[string]cty.Value{},
		localState:   map[string]int{},
		failedLocal:  map[string]bool{},
		networks:     map[string]*decl{},
		netModels:    map[string]*Network{},
		volumes:      map[string]*decl{},
		volModels:    map[string]*Volume{},
		vms:          map[string]*decl{},
		badAttrs:     map[*hcl.Attribute]bool{},
		checkedAttrs: map[*hcl.Attribute]bool{},
		invariant:    map[*hcl.Attribute]bool{},
		evalCache:    map[*hcl.Attribute]cachedVal{},
		sensitive:    map[*hcl.Attribute]bool{},
		sensitiveOK:  map[*hcl.Attribute]bool{},
		ipOwner:      map[ipKey]string{},
		macOwner:     map[netaddr.MAC]string{},
		portOwner:    map[portKey]string{},
		volOwner:     map[string]string{},
		statCache:    map[string]statResult{},
		vmDepends:    map[string][]string{},
		dependsRng:   map[string]hcl.Range{},
	}
	st := l.load()
	if l.diags.HasErrors() {
		st = nil
	}
	return st, l.sources, l.diags
}

// add records a diagnostic once: an error in a vm block with count would
// otherwise be repeated for every instance.
func (l *loader) add(d *hcl.Diagnostic) {
	if d.Expression != nil && l.refersToSensitive(d.Expression) {
		// The text writer prints the values an expression refers to; a
		// sensitive variable's value must not appear.
		d.Expression, d.EvalContext = nil, nil
	}
	if d.Subject != nil {
		k := diagKey{d.Summary, *d.Subject}
		if l.seen[k] {
			return
		}
		l.seen[k] = true
	}
	l.diags = append(l.diags, d)
}

func (l *loader) refersToSensitive(expr hcl.Expression) bool {
	for _, tr := range expr.Variables() {
		if tr.RootName() != "var" {
			continue
		}
		if name, _, ok := attrStep(tr); ok && l.variables[name] != nil && l.variables[name].sensitive {
			return true
		}
	}
	return false
}

func (l *loader) addAll(ds hcl.Diagnostics) {
	for _, d := range ds {
		l.add(d)
	}
}

// environ is the environment the files are loaded in (Options.Environ).
func (l *loader) environ() []string {
	if l.opts.Environ == nil {
		return os.Environ()
	}
	return l.opts.Environ
}

// getenv looks key up in the loader's environment.
func (l *loader) getenv(key string) (string, bool) {
	for _, kv := range l.environ() {
		if k, v, ok := strings.Cut(kv, "="); ok && k == key {
			return v, true
		}
	}
	return "", false
}

func (l *loader) errorf(rng hcl.Range, summary, format string, args ...any) {
	r := rng
	l.add(&hcl.Diagnostic{Severity: hcl.DiagError, Summary: summary, Detail: fmt.Sprintf(format, args...), Subject: &r})
}

func (l *loader) load() *Stack {
	dir := l.opts.Dir
	if dir == "" {
		wd, err := os.Getwd()
		if err != nil {
			l.add(&hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Cannot find working directory", Detail: err.Error()})
			return nil
		}
		dir = wd
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		l.add(&hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid directory", Detail: fmt.Sprintf("resolve %s: %s", dir, err)})
		return nil
	}
	l.dir = abs

	names := l.opts.Files
	if len(names) == 0 {
		names = []string{DefaultFile}
	}
	for i, n := range names {
		p := resolvePath(l.dir, n)
		if i == 0 {
			l.root = filepath.Dir(p)
		}
		l.parseFile(p)
	}
	if l.diags.HasErrors() {
		// Evaluating half-parsed files only adds noise.
		return nil
	}
	l.vars["path"] = cty.ObjectVal(map[string]cty.Value{"root": cty.StringVal(l.root)})

	l.loadVariables()
	l.loadLocals()
	// Empty lists, not null, in JSON.
	st := &Stack{RootDir: l.root, Networks: []*Network{}, Volumes: []*Volume{}, VMs: []*VM{}}
	for _, f := range l.files {
		st.Files = append(st.Files, f.path)
	}
	if l.stackDcl != nil {
		st.Label = l.stackDcl.name
		if a := l.stackDcl.content.Attributes["description"]; a != nil {
			if v, ok := l.eval(a, l.stackDcl.file.ctx, cty.String, scopeTop); ok {
				st.Description = v.AsString()
			}
		}
	}
	st.Namespace = l.namespace()
	l.ns = st.Namespace
	l.loadNetworks()
	l.loadVolumes()
	st.VMs = append(st.VMs, l.loadVMs()...)
	l.checkSensitive()
	for _, n := range sortedKeys(l.netModels) {
		st.Networks = append(st.Networks, l.netModels[n])
	}
	for _, n := range sortedKeys(l.volModels) {
		st.Volumes = append(st.Volumes, l.volModels[n])
	}
	return st
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func (l *loader) parseFile(path string) {
	src, err := os.ReadFile(path)
	if err != nil {
		detail := fmt.Sprintf("read %s: %s.", path, pathErr(err))
		if len(l.opts.Files) == 0 && os.IsNotExist(err) {
			detail = fmt.Sprintf("There is no %s in %s. Run stack in the directory of your stack file, or name the files with -f FILE.", DefaultFile, l.dir)
		}
		l.add(&hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Cannot read stack file", Detail: detail})
		return
	}
	if _, dup := l.sources.files[path]; dup {
		l.add(&hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Stack file given twice", Detail: fmt.Sprintf("%s is listed more than once with -f.", path)})
		return
	}
	hf, diags := hclsyntax.ParseConfig(src, path, hcl.Pos{Line: 1, Column: 1, Byte: 0})
	l.sources.files[path] = hf
	l.addAll(diags)
	if diags.HasErrors() {
		return
	}
	f := &file{path: path, dir: filepath.Dir(path)}
	f.ctx = &hcl.EvalContext{Variables: l.vars, Functions: funcsFor(f.dir)}
	l.files = append(l.files, f)

	content, diags := hf.Body.Content(topSchema)
	l.addAll(diags)
	for _, b := range content.Blocks {
		switch b.Type {
		case "locals":
			attrs, ds := b.Body.JustAttributes()
			l.addAll(ds)
			for _, a := range sortedAttrs(attrs) {
				if prev, ok := l.localAttrs[a.Name]; ok {
					l.errorf(a.NameRange, "Duplicate local value", "A local value named %q was already defined at %s. Local value names must be unique across all files.", a.Name, prev.attr.NameRange)
					continue
				}
				l.localAttrs[a.Name] = &localDecl{attr: a, file: f}
			}
			continue
		case "stack":
			if l.stackDcl != nil {
				l.errorf(b.DefRange, "Duplicate stack block", "A stack block was already defined at %s. There may be at most one stack block across all files.", l.stackDcl.block.DefRange)
				continue
			}
		}
		var schema *hcl.BodySchema
		var m map[string]*decl
		var order *[]string
		switch b.Type {
		case "stack":
			schema = stackSchema
		case "variable":
			schema = variableSchema
		case "network":
			schema, m, order = networkSchema, l.networks, &l.netOrder
		case "volume":
			schema, m, order = volumeSchema, l.volumes, &l.volOrder
		case "vm":
			schema, m, order = vmSchema, l.vms, &l.vmOrder
		}
		c, ds := b.Body.Content(schema)
		l.addAll(ds)
		d := &decl{name: b.Labels[0], block: b, content: c, file: f}
		switch b.Type {
		case "stack":
			l.stackDcl = d
			continue
		case "variable":
			l.declareVariable(d)
			continue
		}
		if !IsDNSLabel(d.name) {
			l.errorf(b.LabelRanges[0], "Invalid "+b.Type+" name", "%q is not a valid %s name: names must be DNS labels (lower-case letters, digits and '-', 1 to 63 characters, not starting or ending with '-').", d.name, b.Type)
			continue
		}
		if prev, ok := m[d.name]; ok {
			l.errorf(b.DefRange, "Duplicate "+b.Type+" block", "A %s named %q was already declared at %s. Names must be unique across all files.", b.Type, d.name, prev.block.DefRange)
			continue
		}
		m[d.name] = d
		*order = append(*order, d.name)
	}
}

// sortedAttrs returns attributes in source order, so diagnostics come out
// in the order a reader meets them.
func sortedAttrs(attrs hcl.Attributes) []*hcl.Attribute {
	out := make([]*hcl.Attribute, 0, len(attrs))
	for _, a := range attrs {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Range.Filename != out[j].Range.Filename {
			return out[i].Range.Filename < out[j].Range.Filename
		}
		return out[i].Range.Start.Byte < out[j].Range.Start.Byte
	})
	return out
}

// namespace applies the precedence -p, stack label, directory name.
func (l *loader) namespace() string {
	// The label is checked even when -p overrides it: the file must load
	// the same way with and without -p.
	if l.stackDcl != nil && !IsDNSLabel(l.stackDcl.name) {
		l.errorf(l.stackDcl.block.LabelRanges[0], "Invalid stack name", "%q is not a valid namespace: the stack label must be a DNS label (lower-case letters, digits and '-', 1 to 63 characters, not starting or ending with '-').", l.stackDcl.name)
	}
	if ns := l.opts.Namespace; ns != "" {
		if err := filenames.CheckNamespace(ns); err != nil {
			l.add(&hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid namespace", Detail: err.Error() + "."})
		}
		return ns
	}
	if l.stackDcl != nil {
		return l.stackDcl.name
	}
	ns := SanitizeNamespace(filepath.Base(l.dir))
	if !IsDNSLabel(ns) {
		l.add(&hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Cannot derive a namespace from the directory name", Detail: fmt.Sprintf("The directory name %q does not make a DNS label. Pass a namespace with -p NAME or give the stack block a label.", filepath.Base(l.dir))})
	}
	return ns
}

// SanitizeNamespace turns a directory name into a namespace candidate:
// lower-cased, every character outside [a-z0-9-] replaced by '-', and
// leading and trailing '-' trimmed. The result may still not be a DNS label
// (empty, or longer than 63 bytes).
func SanitizeNamespace(base string) string {
	b := []byte(strings.ToLower(base))
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			b[i] = '-'
		}
	}
	return strings.Trim(string(b), "-")
}
