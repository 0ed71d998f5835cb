package stackfile

import (
	"fmt"
	"math/big"
	"sort"

	"github.com/agext/levenshtein"
	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
)

// scope says which references an expression may make.
type scope uint8

const (
	allowVar scope = 1 << iota
	allowLocal
	allowPath
	allowNetwork
	allowVolume
	allowCount
	allowEach
)

const (
	scopeTop = allowVar | allowLocal | allowPath
	scopeVM  = scopeTop | allowNetwork | allowVolume
)

// suggest returns the candidate closest to name, or "" when none is close.
func suggest(name string, candidates []string) string {
	best, bestD := "", 3
	sorted := append([]string(nil), candidates...)
	sort.Strings(sorted)
	for _, c := range sorted {
		if d := levenshtein.Distance(name, c, nil); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

func didYouMean(name string, candidates []string) string {
	if s := suggest(name, candidates); s != "" {
		return fmt.Sprintf(" Did you mean %q?", s)
	}
	return ""
}

func keysOf[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

// attrStep returns the name after the root of a traversal (var.NAME).
func attrStep(tr hcl.Traversal) (string, hcl.Range, bool) {
	if len(tr) < 2 {
		return "", tr.SourceRange(), false
	}
	if a, ok := tr[1].(hcl.TraverseAttr); ok {
		return a.Name, tr.SourceRange(), true
	}
	return "", tr.SourceRange(), false
}

// checkRefs reports references the scope does not allow or that name
// nothing. It returns false without a diagnostic when a reference names a
// variable or local that already failed, so one mistake is reported once.
func (l *loader) checkRefs(expr hcl.Expression, sc scope) bool {
	ok := true
	for _, tr := range expr.Variables() {
		root := tr.RootName()
		rng := tr.SourceRange()
		name, _, hasName := attrStep(tr)
		bad := func(summary, format string, args ...any) {
			l.errorf(rng, summary, format, args...)
			ok = false
		}
		switch root {
		case "var":
			if !hasName {
				bad("Invalid reference", "A reference to an input variable has the form var.NAME.")
			} else if sc&allowVar == 0 {
				bad("Variables not allowed", "This value may not refer to input variables.")
			} else if _, declared := l.variables[name]; !declared {
				bad("Reference to undeclared input variable", "An input variable named %q is not declared.%s", name, didYouMean(name, keysOf(l.variables)))
			} else if l.failedVar[name] {
				ok = false
			}
		case "local":
			if !hasName {
				bad("Invalid reference", "A reference to a local value has the form local.NAME.")
			} else if sc&allowLocal == 0 {
				bad("Local values not allowed", "This value may not refer to local values.")
			} else if _, declared := l.localAttrs[name]; !declared {
				bad("Reference to undeclared local value", "A local value named %q is not declared.%s", name, didYouMean(name, keysOf(l.localAttrs)))
			} else if l.failedLocal[name] {
				ok = false
			}
		case "path":
			if !hasName || name != "root" {
				bad("Invalid path attribute", "The only path attribute is path.root, the directory of the first stack file.")
			} else if sc&allowPath == 0 {
				bad("Path not allowed", "This value may not refer to path.root.")
			}
		case "network":
			if !hasName {
				bad("Invalid reference", "A reference to a network has the form network.NAME.")
			} else if sc&allowNetwork == 0 {
				bad("Network references not allowed", "Only vm blocks may refer to networks.")
			} else if _, declared := l.networks[name]; !declared {
				bad("Reference to undeclared network", "A network named %q is not declared.%s", name, didYouMean(name, l.netOrder))
			} else if _, good := l.netModels[name]; !good {
				ok = false
			}
		case "volume":
			if !hasName {
				bad("Invalid reference", "A reference to a volume has the form volume.NAME.")
			} else if sc&allowVolume == 0 {
				bad("Volume references not allowed", "Only vm blocks may refer to volumes.")
			} else if _, declared := l.volumes[name]; !declared {
				bad("Reference to undeclared volume", "A volume named %q is not declared.%s", name, didYouMean(name, l.volOrder))
			}
		case "count":
			if sc&allowCount == 0 {
				bad(`Reference to "count" in non-counted context`, "count.index may only be used in a vm block that sets count.")
			} else if !hasName || name != "index" {
				bad("Invalid count attribute", "The only count attribute is count.index.")
			}
		case "each":
			if sc&allowEach == 0 {
				bad(`Reference to "each" in context without for_each`, "each.key and each.value may only be used in a vm block that sets for_each.")
			} else if !hasName || (name != "key" && name != "value") {
				bad("Invalid each attribute", "The each object has only the attributes key and value.")
			}
		case "vm":
			bad("Invalid reference to a vm", "vm.NAME may only be used in depends_on.")
		default:
			bad("Unknown variable", "There is no variable named %q. References start with var., local., path., network., volume., count. or each.", root)
		}
	}
	return ok
}

// eval evaluates an attribute in ctx and converts it to ty. It returns
// false when the attribute is invalid (a diagnostic is recorded) or null (no
// diagnostic: null means "not set", as in Terraform).
func (l *loader) eval(a *hcl.Attribute, ctx *hcl.EvalContext, ty cty.Type, sc scope) (cty.Value, bool) {
	if l.badAttrs[a] {
		return cty.NilVal, false
	}
	// A vm block's attributes are evaluated once per instance; their
	// references need checking only once.
	if !l.checkedAttrs[a] {
		if !l.checkRefs(a.Expr, sc) {
			l.badAttrs[a] = true
			return cty.NilVal, false
		}
		l.checkedAttrs[a] = true
		l.invariant[a] = !refersToInstance(a.Expr)
	}
	// An attribute that does not refer to count or each has the same value
	// in every instance: evaluate it once. Functions are deterministic, so
	// this changes nothing but the time a large count takes.
	if l.invariant[a] {
		if c, ok := l.evalCache[a]; ok && c.ty.Equals(ty) {
			return c.v, c.ok
		}
		v, ok := l.evalChecked(a, ctx, ty)
		l.evalCache[a] = cachedVal{ty: ty, v: v, ok: ok}
		return v, ok
	}
	return l.evalChecked(a, ctx, ty)
}

type cachedVal struct {
	ty cty.Type
	v  cty.Value
	ok bool
}

func refersToInstance(expr hcl.Expression) bool {
	for _, tr := range expr.Variables() {
		if r := tr.RootName(); r == "count" || r == "each" {
			return true
		}
	}
	return false
}

// evalChecked is eval for an attribute whose references were checked.
func (l *loader) evalChecked(a *hcl.Attribute, ctx *hcl.EvalContext, ty cty.Type) (cty.Value, bool) {
	v, diags := a.Expr.Value(ctx)
	l.addAll(diags)
	if diags.HasErrors() {
		return cty.NilVal, false
	}
	if v.IsNull() {
		return v, false
	}
	if !v.IsWhollyKnown() {
		l.errorf(a.Expr.Range(), "Value not known", "The value of %s could not be determined.", a.Name)
		return cty.NilVal, false
	}
	v, marks := v.UnmarkDeep()
	if _, ok := marks[sensitiveMark]; ok {
		l.sensitive[a] = true
	}
	cv, err := convert.Convert(v, ty)
	if err != nil {
		l.add(&hcl.Diagnostic{
			Severity:    hcl.DiagError,
			Summary:     "Incorrect attribute value type",
			Detail:      fmt.Sprintf("Inappropriate value for attribute %q: %s.", a.Name, err),
			Subject:     a.Expr.Range().Ptr(),
			Expression:  a.Expr,
			EvalContext: ctx,
		})
		return cty.NilVal, false
	}
	if cv.IsNull() {
		return cv, false
	}
	if ty.IsCollectionType() || ty.IsTupleType() || ty.IsObjectType() {
		// Nulls inside lists and maps of strings would panic AsString.
		bad := false
		cty.Walk(cv, func(_ cty.Path, e cty.Value) (bool, error) {
			if e.IsNull() {
				bad = true
			}
			return !bad, nil
		})
		if bad {
			l.errorf(a.Expr.Range(), "Invalid null element", "The value of %q may not contain null elements.", a.Name)
			return cty.NilVal, false
		}
	}
	return cv, true
}

func (l *loader) evalString(a *hcl.Attribute, ctx *hcl.EvalContext, sc scope) (string, bool) {
	if a == nil {
		return "", false
	}
	v, ok := l.eval(a, ctx, cty.String, sc)
	if !ok {
		return "", false
	}
	return v.AsString(), true
}

func (l *loader) evalBool(a *hcl.Attribute, ctx *hcl.EvalContext, sc scope, def bool) bool {
	if a == nil {
		return def
	}
	v, ok := l.eval(a, ctx, cty.Bool, sc)
	if !ok {
		return def
	}
	return v.True()
}

// evalInt evaluates a whole number in [lo, hi]; summary names the error.
func (l *loader) evalInt(a *hcl.Attribute, ctx *hcl.EvalContext, sc scope, lo, hi int64, summary string) (int, bool) {
	if a == nil {
		return 0, false
	}
	v, ok := l.eval(a, ctx, cty.Number, sc)
	if !ok {
		return 0, false
	}
	return l.checkInt(a, v, lo, hi, summary)
}

func (l *loader) checkInt(a *hcl.Attribute, v cty.Value, lo, hi int64, summary string) (int, bool) {
	bf := v.AsBigFloat()
	if bf.IsInf() || !bf.IsInt() {
		l.errorf(a.Expr.Range(), summary, "%s must be a whole number from %d to %d; got %s.", a.Name, lo, hi, bf.Text('g', 10))
		return 0, false
	}
	i, acc := bf.Int64()
	if acc != big.Exact || i < lo || i > hi {
		l.errorf(a.Expr.Range(), summary, "%s must be a whole number from %d to %d; got %s.", a.Name, lo, hi, bf.Text('g', 10))
		return 0, false
	}
	return int(i), true
}

func (l *loader) evalStrings(a *hcl.Attribute, ctx *hcl.EvalContext, sc scope) ([]string, bool) {
	if a == nil {
		return nil, false
	}
	v, ok := l.eval(a, ctx, cty.List(cty.String), sc)
	if !ok {
		return nil, false
	}
	out := make([]string, 0, v.LengthInt())
	for it := v.ElementIterator(); it.Next(); {
		_, e := it.Element()
		out = append(out, e.AsString())
	}
	return out, true
}

func (l *loader) evalStringMap(a *hcl.Attribute, ctx *hcl.EvalContext, sc scope) (map[string]string, bool) {
	if a == nil {
		return nil, false
	}
	v, ok := l.eval(a, ctx, cty.Map(cty.String), sc)
	if !ok {
		return nil, false
	}
	out := make(map[string]string, v.LengthInt())
	for it := v.ElementIterator(); it.Next(); {
		k, e := it.Element()
		out[k.AsString()] = e.AsString()
	}
	return out, true
}

// evalSize accepts a number of bytes or a string with a unit.
func (l *loader) evalSize(a *hcl.Attribute, ctx *hcl.EvalContext, sc scope, min int64) (int64, bool) {
	v, ok := l.eval(a, ctx, cty.DynamicPseudoType, sc)
	if !ok {
		return 0, false
	}
	var n int64
	switch {
	case v.Type() == cty.Number:
		bf := v.AsBigFloat()
		i, acc := bf.Int64()
		if !bf.IsInt() || acc != big.Exact || i < 0 {
			l.errorf(a.Expr.Range(), "Invalid size", "A size in bytes must be a whole, non-negative number; got %s.", bf.Text('g', 10))
			return 0, false
		}
		n = i
	case v.Type() == cty.String:
		var err error
		n, err = ParseSize(v.AsString())
		if err != nil {
			l.errorf(a.Expr.Range(), "Invalid size", "%s.", err)
			return 0, false
		}
	default:
		l.errorf(a.Expr.Range(), "Incorrect attribute value type", "Inappropriate value for attribute %q: a size such as \"1GiB\" or a number of bytes is required.", a.Name)
		return 0, false
	}
	if n < min {
		l.errorf(a.Expr.Range(), "Invalid size", "%s must be at least %d bytes (1MiB); got %d.", a.Name, min, n)
		return 0, false
	}
	return n, true
}

// evalEnum evaluates a string that must be one of allowed.
func (l *loader) evalEnum(a *hcl.Attribute, ctx *hcl.EvalContext, sc scope, allowed []string, def string) string {
	if a == nil {
		return def
	}
	s, ok := l.evalString(a, ctx, sc)
	if !ok {
		return def
	}
	for _, v := range allowed {
		if s == v {
			return s
		}
	}
	l.errorf(a.Expr.Range(), "Invalid "+a.Name, "%q is not a valid %s; use one of %q.%s", s, a.Name, allowed, didYouMean(s, allowed))
	return def
}
