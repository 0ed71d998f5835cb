package app

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hashicorp/hcl/v2"
	"github.com/spf13/cobra"

	"github.com/stackvm/stack/stackfile"
)

func newFmtCmd(g *globals, s Streams) *cobra.Command {
	var check bool
	cmd := &cobra.Command{
		Use:   "fmt [FILE...]",
		Short: "Rewrite stack files in the canonical format (--check: list those that would change)",
		RunE: func(cmd *cobra.Command, args []string) error {
			files := args
			if len(files) == 0 {
				files = g.files
			}
			if len(files) == 0 {
				var err error
				if files, err = filepath.Glob("*.hcl"); err != nil {
					return err
				}
				if len(files) == 0 {
					return fmt.Errorf("no .hcl files in the current directory")
				}
			}
			failed, changed := false, false
			for _, name := range files {
				src, err := os.ReadFile(name)
				if err != nil {
					return fmt.Errorf("read %s: %w", name, err)
				}
				out, diags := stackfile.Format(src, name)
				if diags.HasErrors() {
					wr := hcl.NewDiagnosticTextWriter(s.Err, map[string]*hcl.File{name: {Bytes: src}}, termWidth(s.Err), colorEnabled(s.Err))
					wr.WriteDiagnostics(diags)
					failed = true
					continue
				}
				if bytes.Equal(src, out) {
					continue
				}
				changed = true
				fmt.Fprintln(s.Out, name)
				if check {
					continue
				}
				fi, err := os.Stat(name)
				if err != nil {
					return err
				}
				if err := os.WriteFile(name, out, fi.Mode().Perm()); err != nil {
					return fmt.Errorf("write %s: %w", name, err)
				}
			}
			if failed || (check && changed) {
				return errReported
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&check, "check", false, "change nothing; exit 1 and list the files that are not formatted")
	return cmd
}
