package stackfile

import (
	"fmt"
	"os"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/ext/typeexpr"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
)

// EnvPrefix prefixes environment variables that set input variables.
const EnvPrefix = "STACK_VAR_"

type variable struct {
	decl      *decl
	ty        cty.Type
	defaults  *typeexpr.Defaults
	literal   bool // --var and STACK_VAR_ values are taken as raw strings
	sensitive bool
	value     cty.Value
	valueRng  hcl.Range // where the winning value came from
	set       bool
}

func (l *loader) declareVariable(d *decl) {
	b := d.block
	if !hclsyntax.ValidIdentifier(d.name) {
		l.errorf(b.LabelRanges[0], "Invalid variable name", "%q is not a valid variable name: it must start with a letter and contain only letters, digits, '_' and '-'.", d.name)
		return
	}
	if prev, ok := l.variables[d.name]; ok {
		l.errorf(b.DefRange, "Duplicate variable block", "A variable named %q was already declared at %s. Names must be unique across all files.", d.name, prev.decl.block.DefRange)
		return
	}
	v := &variable{decl: d, ty: cty.DynamicPseudoType, literal: true}
	l.variables[d.name] = v
	l.varOrder = append(l.varOrder, d.name)
	if a := d.content.Attributes["type"]; a != nil {
		ty, defs, diags := typeexpr.TypeConstraintWithDefaults(a.Expr)
		l.addAll(diags)
		if diags.HasErrors() {
			l.failedVar[d.name] = true
			return
		}
		v.ty, v.defaults = ty, defs
		v.literal = ty == cty.String
	}
	if a := d.content.Attributes["sensitive"]; a != nil {
		v.sensitive = l.evalBool(a, d.file.ctx, 0, false)
	}
	if a := d.content.Attributes["description"]; a != nil {
		l.evalString(a, d.file.ctx, 0)
	}
	if a := d.content.Attributes["default"]; a != nil {
		if len(a.Expr.Variables()) > 0 {
			l.errorf(a.Expr.Range(), "Variables not allowed", "A variable's default value may not refer to other values.")
			l.failedVar[d.name] = true
			return
		}
		val, diags := a.Expr.Value(d.file.ctx)
		l.addAll(diags)
		if diags.HasErrors() {
			l.failedVar[d.name] = true
			return
		}
		v.value, v.valueRng, v.set = val, a.Expr.Range(), true
	}
}

// loadVariables applies values by precedence: default < STACK_VAR_<name> <
// --var-file (in order) < --var (in order). Then it converts each to its
// type and runs its validation rules.
func (l *loader) loadVariables() {
	for _, kv := range l.environ() {
		k, val, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(k, EnvPrefix) {
			continue
		}
		name := strings.TrimPrefix(k, EnvPrefix)
		v, declared := l.variables[name]
		if !declared {
			// The environment is shared with everything else the user
			// runs, so a stray STACK_VAR_ is ignored, as Terraform does
			// with TF_VAR_.
			continue
		}
		l.setRaw(v, fmt.Sprintf("<environment variable %s>", k), val)
	}
	for _, vf := range l.opts.VarFiles {
		l.loadVarFile(resolvePath(l.dir, vf))
	}
	for _, kv := range l.opts.Vars {
		name, val, ok := strings.Cut(kv, "=")
		if !ok || name == "" {
			l.add(&hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid --var option", Detail: fmt.Sprintf("The value %q is not of the form NAME=VALUE.", kv)})
			continue
		}
		v, declared := l.variables[name]
		if !declared {
			l.add(&hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Value for undeclared variable", Detail: fmt.Sprintf("--var sets %q, but no variable of that name is declared.%s", name, didYouMean(name, l.varOrder))})
			continue
		}
		fname := fmt.Sprintf("<value for var.%s>", name)
		for i := 2; l.sources.files[fname] != nil; i++ {
			fname = fmt.Sprintf("<value for var.%s #%d>", name, i)
		}
		l.setRaw(v, fname, val)
	}

	obj := map[string]cty.Value{}
	for _, name := range l.varOrder {
		v := l.variables[name]
		if l.failedVar[name] {
			continue
		}
		if !v.set {
			l.errorf(v.decl.block.DefRange, "No value for required variable", "The variable %q has no default, so it needs a value: --var %s=..., a --var-file, or the environment variable %s%s.", name, name, EnvPrefix, name)
			l.failedVar[name] = true
			continue
		}
		val := v.value
		if v.defaults != nil {
			val = v.defaults.Apply(val)
		}
		cv, err := convert.Convert(val, v.ty)
		if err != nil {
			l.errorf(v.valueRng, "Invalid value for variable", "The value for variable %q is not of type %s: %s.", name, typeexpr.TypeString(v.ty), err)
			l.failedVar[name] = true
			continue
		}
		v.value = cv
		if v.sensitive {
			// HCL carries the mark into every value computed from it.
			cv = cv.Mark(sensitiveMark)
		}
		obj[name] = cv
	}
	l.vars["var"] = cty.ObjectVal(obj)

	for _, name := range l.varOrder {
		if !l.failedVar[name] {
			l.validateVariable(l.variables[name])
		}
	}
}

// setRaw sets a variable from a --var or STACK_VAR_ string. Like Terraform,
// the string is the value for variables of type string (or no type); for
// every other type it is parsed as an HCL expression.
func (l *loader) setRaw(v *variable, fname, raw string) {
	src := []byte(raw)
	l.sources.files[fname] = &hcl.File{Bytes: src}
	end := hcl.Pos{Line: 1, Column: 1 + len(raw), Byte: len(raw)}
	rng := hcl.Range{Filename: fname, Start: hcl.Pos{Line: 1, Column: 1}, End: end}
	if v.literal {
		v.value, v.valueRng, v.set = cty.StringVal(raw), rng, true
		return
	}
	expr, diags := hclsyntax.ParseExpression(src, fname, hcl.Pos{Line: 1, Column: 1})
	l.addAll(diags)
	if diags.HasErrors() {
		l.failedVar[v.decl.name] = true
		return
	}
	val, diags := expr.Value(nil)
	l.addAll(diags)
	if diags.HasErrors() {
		l.failedVar[v.decl.name] = true
		return
	}
	v.value, v.valueRng, v.set = val, expr.Range(), true
}

func (l *loader) loadVarFile(path string) {
	src, err := os.ReadFile(path)
	if err != nil {
		l.add(&hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Cannot read variable file", Detail: fmt.Sprintf("read %s: %s", path, err)})
		return
	}
	hf, diags := hclsyntax.ParseConfig(src, path, hcl.Pos{Line: 1, Column: 1})
	l.sources.files[path] = hf
	l.addAll(diags)
	if diags.HasErrors() {
		return
	}
	attrs, diags := hf.Body.JustAttributes()
	l.addAll(diags)
	for _, a := range sortedAttrs(attrs) {
		v, declared := l.variables[a.Name]
		if !declared {
			l.errorf(a.NameRange, "Value for undeclared variable", "The variable file sets %q, but no variable of that name is declared.%s", a.Name, didYouMean(a.Name, l.varOrder))
			continue
		}
		// Variable files hold plain values: no references, no functions.
		val, ds := a.Expr.Value(nil)
		l.addAll(ds)
		if ds.HasErrors() {
			l.failedVar[a.Name] = true
			continue
		}
		v.value, v.valueRng, v.set = val, a.Expr.Range(), true
	}
}

func (l *loader) validateVariable(v *variable) {
	for _, b := range v.decl.content.Blocks {
		c, diags := b.Body.Content(validationSchema)
		l.addAll(diags)
		if diags.HasErrors() {
			continue
		}
		cond, msg := c.Attributes["condition"], c.Attributes["error_message"]
		l.sensitiveOK[cond] = true // a bool: it reveals no more than the rule
		ctx := v.decl.file.ctx
		cv, ok := l.eval(cond, ctx, cty.Bool, allowVar)
		if !ok {
			if cv.IsNull() && cv != cty.NilVal {
				l.errorf(cond.Expr.Range(), "Invalid validation condition", "The condition evaluated to null; it must be true or false.")
			}
			continue
		}
		if cv.True() {
			continue
		}
		text, ok := l.evalString(msg, ctx, allowVar)
		if !ok {
			text = "(the error_message could not be evaluated)"
		}
		r := v.valueRng
		l.add(&hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  "Invalid value for variable",
			Detail:   fmt.Sprintf("%s\n\nThis was checked by the validation rule at %s.", text, cond.Range),
			Subject:  &r,
		})
		l.failedVar[v.decl.name] = true
	}
}

// loadLocals evaluates every local value in dependency order.
func (l *loader) loadLocals() {
	for _, name := range sortedKeys(l.localAttrs) {
		l.evalLocal(name, nil)
	}
	l.vars["local"] = cty.ObjectVal(copyVals(l.localVals))
}

// copyVals copies m: cty.ObjectVal keeps the map it is given, which must
// not change afterwards.
func copyVals(m map[string]cty.Value) map[string]cty.Value {
	c := make(map[string]cty.Value, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// evalLocal evaluates one local after its dependencies; path is the chain
// of locals being evaluated, to name a cycle.
func (l *loader) evalLocal(name string, path []string) {
	switch l.localState[name] {
	case 2:
		return
	case 1:
		i := 0
		for path[i] != name {
			i++
		}
		cycle := append(append([]string(nil), path[i:]...), name)
		for j := range cycle {
			cycle[j] = "local." + cycle[j]
		}
		d := l.localAttrs[name]
		l.errorf(d.attr.NameRange, "Cycle in local values", "The local values refer to each other in a cycle: %s.", strings.Join(cycle, " -> "))
		for _, n := range path[i:] {
			l.failedLocal[n] = true
		}
		return
	}
	l.localState[name] = 1
	d := l.localAttrs[name]
	path = append(path, name)
	for _, tr := range d.attr.Expr.Variables() {
		if tr.RootName() != "local" {
			continue
		}
		if dep, _, ok := attrStep(tr); ok {
			if _, declared := l.localAttrs[dep]; declared {
				l.evalLocal(dep, path)
			}
		}
	}
	l.localState[name] = 2
	if l.failedLocal[name] {
		return
	}
	ctx := d.file.ctx.NewChild()
	ctx.Variables = map[string]cty.Value{"local": cty.ObjectVal(copyVals(l.localVals))}
	v, ok := l.eval(d.attr, ctx, cty.DynamicPseudoType, scopeTop)
	if !ok {
		if v == cty.NilVal {
			l.failedLocal[name] = true
			return
		}
		v = cty.NullVal(cty.DynamicPseudoType)
	}
	l.sensitiveOK[d.attr] = true
	if l.sensitive[d.attr] {
		// eval unmarks; the local as a whole stays sensitive.
		v = v.Mark(sensitiveMark)
	}
	l.localVals[name] = v
}
