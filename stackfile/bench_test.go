package stackfile

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func benchLoad(b *testing.B, nVMs int) {
	dir := b.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "stack.hcl"), GenerateBenchStack(nVMs, 10), 0o644); err != nil {
		b.Fatal(err)
	}
	opts := Options{Dir: dir, Environ: []string{}}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		st, src, diags := Load(opts)
		if len(diags) > 0 {
			b.Fatalf("diagnostics:\n%s", renderDiags(src, diags))
		}
		if len(st.VMs) != nVMs {
			b.Fatalf("got %d VMs, want %d", len(st.VMs), nVMs)
		}
	}
}

// BenchmarkLoad1000 and BenchmarkLoad10000 measure Load on generated
// stacks; the goal is under 50 ms for 1,000 VMs and at most 12x that for
// 10,000 (no quadratic step).
func BenchmarkLoad1000(b *testing.B)  { benchLoad(b, 1000) }
func BenchmarkLoad10000(b *testing.B) { benchLoad(b, 10000) }

// BenchmarkLoadScaling interleaves loads of the 1,000- and 10,000-VM stacks
// so that both see the same machine load, and reports the ratio of their
// times (goal: at most 12) and each time in ms.
func BenchmarkLoadScaling(b *testing.B) {
	opts := map[int]Options{}
	for _, n := range []int{1000, 10000} {
		dir := b.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "stack.hcl"), GenerateBenchStack(n, 10), 0o644); err != nil {
			b.Fatal(err)
		}
		opts[n] = Options{Dir: dir, Environ: []string{}}
	}
	var small, large time.Duration
	for b.Loop() {
		for _, n := range []int{1000, 10000} {
			start := time.Now()
			st, _, diags := Load(opts[n])
			d := time.Since(start)
			if diags.HasErrors() || len(st.VMs) != n {
				b.Fatalf("load %d VMs: %v", n, diags)
			}
			if n == 1000 {
				small += d
			} else {
				large += d
			}
		}
	}
	b.ReportMetric(float64(large)/float64(small), "ratio-10k/1k")
	b.ReportMetric(float64(small.Milliseconds())/float64(b.N), "ms/load-1k")
	b.ReportMetric(float64(large.Milliseconds())/float64(b.N), "ms/load-10k")
}

// TestGenerateBenchStack checks the generator's output is a valid stack of
// the requested size, so the planner's benchmarks can rely on it.
func TestGenerateBenchStack(t *testing.T) {
	for _, c := range []struct{ vms, nets int }{{1000, 10}, {7, 3}, {1, 1}} {
		dir := writeFiles(t, map[string]string{"stack.hcl": string(GenerateBenchStack(c.vms, c.nets))})
		st := mustLoad(t, Options{Dir: dir})
		if len(st.VMs) != c.vms || len(st.Networks) != c.nets {
			t.Errorf("GenerateBenchStack(%d, %d): %d VMs, %d networks", c.vms, c.nets, len(st.VMs), len(st.Networks))
		}
	}
}
