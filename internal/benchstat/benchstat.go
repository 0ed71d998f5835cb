// Package benchstat holds the statistics the bench-* commands report:
// medians, and per-run ratios against a baseline measured in the same run.
package benchstat

import (
	"fmt"
	"sort"
	"time"
)

// Median is the median of ts.
func Median(ts []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ts...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// Overhead is the median, minimum and maximum of a[i]/b[i]-1 over the
// runs, as "median[min..max]": what a costs over b, run by run.
func Overhead(a, b []time.Duration) string {
	r := ratios(a, b)
	for i := range r {
		r[i]--
	}
	return fmt.Sprintf("%.3f[%.3f..%.3f]", r[len(r)/2], r[0], r[len(r)-1])
}

// Ratio is the median, minimum and maximum of a[i]/b[i] over the runs, as
// "median[min..max]": what a takes as a share of b, run by run.
func Ratio(a, b []time.Duration) string {
	r := ratios(a, b)
	return fmt.Sprintf("%.3f[%.3f..%.3f]", r[len(r)/2], r[0], r[len(r)-1])
}

func ratios(a, b []time.Duration) []float64 {
	r := make([]float64, len(a))
	for i := range a {
		r[i] = float64(a[i]) / float64(b[i])
	}
	sort.Float64s(r)
	return r
}
