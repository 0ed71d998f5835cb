package planner

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stackvm/stack/stackfile"
	"github.com/stackvm/stack/state"
)

// benchStack writes the generated stack of nVMs VMs on 10 networks (count
// and for_each) and returns its load options.
func benchStack(b *testing.B, nVMs int) stackfile.Options {
	b.Helper()
	dir := b.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "stack.hcl"), stackfile.GenerateBenchStack(nVMs, 10), 0o644); err != nil {
		b.Fatal(err)
	}
	return stackfile.Options{Dir: dir, Namespace: "bench", Environ: []string{}}
}

func loadAndPlan(b *testing.B, opts stackfile.Options, st *state.State) *Plan {
	s, _, diags := stackfile.Load(opts)
	if diags.HasErrors() {
		b.Fatal(diags)
	}
	p, err := Make(Input{Desired: s, State: st})
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// BenchmarkLoadPlan measures load + plan of a new stack (everything to
// create) and of the same stack against its own applied state (nothing to
// change), at 1,000 and 10,000 VMs.
func BenchmarkLoadPlan(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		opts := benchStack(b, n)
		applied := state.New("bench")
		first := loadAndPlan(b, opts, applied)
		for _, a := range first.Order() {
			first.Record(applied, a)
		}
		b.Run(itoa(n)+"/new", func(b *testing.B) {
			for b.Loop() {
				loadAndPlan(b, opts, state.New("bench"))
			}
		})
		b.Run(itoa(n)+"/unchanged", func(b *testing.B) {
			for b.Loop() {
				if p := loadAndPlan(b, opts, applied); p.HasChanges() {
					b.Fatal("unchanged stack planned changes")
				}
			}
		})
	}
}

func itoa(n int) string {
	if n >= 1000 && n%1000 == 0 {
		return string(rune('0'+n/10000%10)) + string(rune('0'+n/1000%10)) + "k"
	}
	return "n"
}
