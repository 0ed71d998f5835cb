package stackfile

import (
	"encoding/base64"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"unicode/utf8"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/ext/tryfunc"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	ctyyaml "github.com/zclconf/go-cty-yaml"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
	"github.com/zclconf/go-cty/cty/function/stdlib"
)

// baseFuncs are the functions that do not depend on the calling file. Every
// one of them is deterministic: a plan must not change from run to run, so
// timestamp, uuid and the like are deliberately absent.
var baseFuncs = map[string]function.Function{
	"abs":             stdlib.AbsoluteFunc,
	"base64decode":    base64DecodeFunc,
	"base64encode":    base64EncodeFunc,
	"can":             tryfunc.CanFunc,
	"ceil":            stdlib.CeilFunc,
	"chomp":           stdlib.ChompFunc,
	"chunklist":       stdlib.ChunklistFunc,
	"cidrhost":        cidrHostFunc,
	"cidrnetmask":     cidrNetmaskFunc,
	"cidrsubnet":      cidrSubnetFunc,
	"coalesce":        stdlib.CoalesceFunc,
	"coalescelist":    stdlib.CoalesceListFunc,
	"compact":         stdlib.CompactFunc,
	"concat":          stdlib.ConcatFunc,
	"contains":        stdlib.ContainsFunc,
	"csvdecode":       stdlib.CSVDecodeFunc,
	"distinct":        stdlib.DistinctFunc,
	"element":         stdlib.ElementFunc,
	"flatten":         stdlib.FlattenFunc,
	"floor":           stdlib.FloorFunc,
	"format":          stdlib.FormatFunc,
	"formatlist":      stdlib.FormatListFunc,
	"indent":          stdlib.IndentFunc,
	"index":           stdlib.IndexFunc,
	"join":            stdlib.JoinFunc,
	"jsondecode":      stdlib.JSONDecodeFunc,
	"jsonencode":      stdlib.JSONEncodeFunc,
	"keys":            stdlib.KeysFunc,
	"length":          stdlib.LengthFunc,
	"log":             stdlib.LogFunc,
	"lookup":          stdlib.LookupFunc,
	"lower":           stdlib.LowerFunc,
	"max":             stdlib.MaxFunc,
	"merge":           stdlib.MergeFunc,
	"min":             stdlib.MinFunc,
	"parseint":        stdlib.ParseIntFunc,
	"pow":             stdlib.PowFunc,
	"range":           stdlib.RangeFunc,
	"regex":           stdlib.RegexFunc,
	"regexall":        stdlib.RegexAllFunc,
	"replace":         stdlib.ReplaceFunc,
	"reverse":         stdlib.ReverseListFunc,
	"setintersection": stdlib.SetIntersectionFunc,
	"setproduct":      stdlib.SetProductFunc,
	"setsubtract":     stdlib.SetSubtractFunc,
	"setunion":        stdlib.SetUnionFunc,
	"signum":          stdlib.SignumFunc,
	"slice":           stdlib.SliceFunc,
	"sort":            stdlib.SortFunc,
	"split":           stdlib.SplitFunc,
	"strrev":          stdlib.ReverseFunc,
	"substr":          stdlib.SubstrFunc,
	"title":           stdlib.TitleFunc,
	"tobool":          stdlib.MakeToFunc(cty.Bool),
	"tolist":          stdlib.MakeToFunc(cty.List(cty.DynamicPseudoType)),
	"tomap":           stdlib.MakeToFunc(cty.Map(cty.DynamicPseudoType)),
	"tonumber":        stdlib.MakeToFunc(cty.Number),
	"toset":           stdlib.MakeToFunc(cty.Set(cty.DynamicPseudoType)),
	"tostring":        stdlib.MakeToFunc(cty.String),
	"trim":            stdlib.TrimFunc,
	"trimprefix":      stdlib.TrimPrefixFunc,
	"trimspace":       stdlib.TrimSpaceFunc,
	"trimsuffix":      stdlib.TrimSuffixFunc,
	"try":             tryfunc.TryFunc,
	"upper":           stdlib.UpperFunc,
	"values":          stdlib.ValuesFunc,
	"yamldecode":      ctyyaml.YAMLDecodeFunc,
	"yamlencode":      ctyyaml.YAMLEncodeFunc,
	"zipmap":          stdlib.ZipmapFunc,
}

// FunctionNames lists every function a stack file may call, for docs and
// tests.
func FunctionNames() []string {
	names := make([]string, 0, len(baseFuncs)+2)
	for n := range baseFuncs {
		names = append(names, n)
	}
	names = append(names, "file", "templatefile")
	return names
}

// funcsFor returns the function table for expressions in a file whose
// directory is dir: file and templatefile resolve relative paths against it.
func funcsFor(dir string) map[string]function.Function {
	fs := make(map[string]function.Function, len(baseFuncs)+2)
	for n, f := range baseFuncs {
		fs[n] = f
	}
	fs["file"] = makeFileFunc(dir)
	// templatefile's templates may call every function but templatefile
	// itself, which rules out unbounded recursion.
	inner := make(map[string]function.Function, len(fs))
	for n, f := range fs {
		inner[n] = f
	}
	fs["templatefile"] = makeTemplateFileFunc(dir, inner)
	return fs
}

func resolvePath(dir, p string) string {
	if filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return filepath.Join(dir, p)
}

// maxFileSize bounds what file() and templatefile() read, so that a stray
// reference to a disk image does not pull gigabytes into memory.
const maxFileSize = 16 << 20

func readTextFile(dir, p string) (string, error) {
	b, err := readSmallFile(resolvePath(dir, p))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", p, err)
	}
	if !utf8.Valid(b) {
		return "", fmt.Errorf("read %s: contents are not valid UTF-8; use base64 encoding outside stack", p)
	}
	return string(b), nil
}

// readSmallFile reads a file of at most maxFileSize bytes.
func readSmallFile(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.IsDir() {
		return nil, errors.New("is a directory")
	}
	if fi.Size() > maxFileSize {
		return nil, fmt.Errorf("file is larger than %d bytes", maxFileSize)
	}
	return os.ReadFile(path)
}

func makeFileFunc(dir string) function.Function {
	return function.New(&function.Spec{
		Description: "Reads a file, relative to the directory of the stack file that calls it.",
		Params:      []function.Parameter{{Name: "path", Type: cty.String}},
		Type:        function.StaticReturnType(cty.String),
		Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
			s, err := readTextFile(dir, args[0].AsString())
			if err != nil {
				return cty.UnknownVal(cty.String), function.NewArgError(0, err)
			}
			return cty.StringVal(s), nil
		},
	})
}

func makeTemplateFileFunc(dir string, funcs map[string]function.Function) function.Function {
	return function.New(&function.Spec{
		Description: "Renders a template file, relative to the directory of the stack file that calls it.",
		Params: []function.Parameter{
			{Name: "path", Type: cty.String},
			{Name: "vars", Type: cty.DynamicPseudoType},
		},
		Type: function.StaticReturnType(cty.DynamicPseudoType),
		Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
			name := args[0].AsString()
			src, err := readTextFile(dir, name)
			if err != nil {
				return cty.DynamicVal, function.NewArgError(0, err)
			}
			vars := args[1]
			if vars.IsNull() || !(vars.Type().IsObjectType() || vars.Type().IsMapType()) {
				return cty.DynamicVal, function.NewArgErrorf(1, "invalid vars value: must be a map or object")
			}
			ctx := &hcl.EvalContext{Variables: map[string]cty.Value{}, Functions: funcs}
			for it := vars.ElementIterator(); it.Next(); {
				k, v := it.Element()
				if !hclsyntax.ValidIdentifier(k.AsString()) {
					return cty.DynamicVal, function.NewArgErrorf(1, "invalid template variable name %q: must start with a letter and contain only letters, digits, underscores and dashes", k.AsString())
				}
				ctx.Variables[k.AsString()] = v
			}
			expr, diags := hclsyntax.ParseTemplate([]byte(src), resolvePath(dir, name), hcl.Pos{Line: 1, Column: 1})
			if diags.HasErrors() {
				return cty.DynamicVal, function.NewArgErrorf(0, "parse template %s: %s", name, diags.Error())
			}
			for _, tr := range expr.Variables() {
				if _, ok := ctx.Variables[tr.RootName()]; !ok {
					return cty.DynamicVal, function.NewArgErrorf(1, "vars map does not contain key %q, referenced at %s", tr.RootName(), tr.SourceRange())
				}
			}
			val, diags := expr.Value(ctx)
			if diags.HasErrors() {
				return cty.DynamicVal, function.NewArgErrorf(0, "render template %s: %s", name, diags.Error())
			}
			return val, nil
		},
	})
}

var base64EncodeFunc = function.New(&function.Spec{
	Description: "Encodes a string with standard base64.",
	Params:      []function.Parameter{{Name: "str", Type: cty.String}},
	Type:        function.StaticReturnType(cty.String),
	Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
		return cty.StringVal(base64.StdEncoding.EncodeToString([]byte(args[0].AsString()))), nil
	},
})

var base64DecodeFunc = function.New(&function.Spec{
	Description: "Decodes a standard base64 string; the result must be UTF-8.",
	Params:      []function.Parameter{{Name: "str", Type: cty.String}},
	Type:        function.StaticReturnType(cty.String),
	Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
		b, err := base64.StdEncoding.DecodeString(args[0].AsString())
		if err != nil {
			return cty.UnknownVal(cty.String), function.NewArgErrorf(0, "invalid base64: %s", err)
		}
		if !utf8.Valid(b) {
			return cty.UnknownVal(cty.String), function.NewArgErrorf(0, "decoded bytes are not valid UTF-8")
		}
		return cty.StringVal(string(b)), nil
	},
})

func parseIPv4Prefix(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR %q: %w", s, err)
	}
	if !p.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR %q: only IPv4 is supported", s)
	}
	return p.Masked(), nil
}

// smallInt returns a number argument as an int64 when it is a whole number
// in [min, max].
func smallInt(v cty.Value, lo, hi int64) (int64, bool) {
	bf := v.AsBigFloat()
	if !bf.IsInt() {
		return 0, false
	}
	i, acc := bf.Int64()
	if acc != big.Exact || i < lo || i > hi {
		return 0, false
	}
	return i, true
}

// cidrHostFunc is Terraform's cidrhost for IPv4: a negative hostnum counts
// back from the end of the range.
var cidrHostFunc = function.New(&function.Spec{
	Description: "Returns the host with the given number in an IPv4 CIDR prefix.",
	Params: []function.Parameter{
		{Name: "prefix", Type: cty.String},
		{Name: "hostnum", Type: cty.Number},
	},
	Type: function.StaticReturnType(cty.String),
	Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
		p, err := parseIPv4Prefix(args[0].AsString())
		if err != nil {
			return cty.UnknownVal(cty.String), function.NewArgError(0, err)
		}
		size := int64(1) << (32 - p.Bits())
		n, ok := smallInt(args[1], -size, size-1)
		if !ok {
			return cty.UnknownVal(cty.String), function.NewArgErrorf(1, "prefix %s has no host number %s", p, args[1].AsBigFloat().String())
		}
		if n < 0 {
			n += size
		}
		base := p.Addr().As4()
		v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
		v += uint32(n)
		return cty.StringVal(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}).String()), nil
	},
})

var cidrNetmaskFunc = function.New(&function.Spec{
	Description: "Returns the dotted netmask of an IPv4 CIDR prefix.",
	Params:      []function.Parameter{{Name: "prefix", Type: cty.String}},
	Type:        function.StaticReturnType(cty.String),
	Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
		p, err := parseIPv4Prefix(args[0].AsString())
		if err != nil {
			return cty.UnknownVal(cty.String), function.NewArgError(0, err)
		}
		m := ^uint32(0)
		if p.Bits() < 32 {
			m = ^(^uint32(0) >> p.Bits())
		}
		return cty.StringVal(netip.AddrFrom4([4]byte{byte(m >> 24), byte(m >> 16), byte(m >> 8), byte(m)}).String()), nil
	},
})

// cidrSubnetFunc is Terraform's cidrsubnet for IPv4.
var cidrSubnetFunc = function.New(&function.Spec{
	Description: "Returns the netnum-th subnet of an IPv4 prefix extended by newbits bits.",
	Params: []function.Parameter{
		{Name: "prefix", Type: cty.String},
		{Name: "newbits", Type: cty.Number},
		{Name: "netnum", Type: cty.Number},
	},
	Type: function.StaticReturnType(cty.String),
	Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
		p, err := parseIPv4Prefix(args[0].AsString())
		if err != nil {
			return cty.UnknownVal(cty.String), function.NewArgError(0, err)
		}
		nb, ok := smallInt(args[1], 0, int64(32-p.Bits()))
		if !ok {
			return cty.UnknownVal(cty.String), function.NewArgErrorf(1, "cannot extend prefix %s by %s bits", p, args[1].AsBigFloat().String())
		}
		nn, ok := smallInt(args[2], 0, (int64(1)<<nb)-1)
		if !ok {
			return cty.UnknownVal(cty.String), function.NewArgErrorf(2, "prefix %s extended by %d bits has no subnet number %s", p, nb, args[2].AsBigFloat().String())
		}
		bits := p.Bits() + int(nb)
		base := p.Addr().As4()
		v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
		v |= uint32(nn) << (32 - bits)
		a := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
		return cty.StringVal(netip.PrefixFrom(a, bits).String()), nil
	},
})
