package stackfile

import (
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/hashicorp/hcl/v2/hclwrite"
)

// Format returns src in canonical HCL layout. The source is parsed first:
// a syntax error is returned as diagnostics with nil output, never a
// silent rewrite of broken input.
func Format(src []byte, filename string) ([]byte, hcl.Diagnostics) {
	if _, diags := hclsyntax.ParseConfig(src, filename, hcl.Pos{Line: 1, Column: 1}); diags.HasErrors() {
		return nil, diags
	}
	return hclwrite.Format(src), nil
}
