package stackfile

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Size units. Binary suffixes (KiB, MiB, GiB, TiB) are powers of 1024;
// decimal ones (K/KB, M/MB, G/GB, T/TB) powers of 1000; B or no suffix means
// bytes. Suffixes are case-sensitive so that "1m" is never read as a
// megabyte by accident.
var sizeUnits = map[string]int64{
	"":    1,
	"B":   1,
	"K":   1e3,
	"KB":  1e3,
	"M":   1e6,
	"MB":  1e6,
	"G":   1e9,
	"GB":  1e9,
	"T":   1e12,
	"TB":  1e12,
	"KiB": 1 << 10,
	"MiB": 1 << 20,
	"GiB": 1 << 30,
	"TiB": 1 << 40,
}

// ParseSize parses a size such as "1GiB", "512MiB", "10G" or "4096" into
// bytes. The number must be a non-negative integer.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("parse size %q: must start with a whole number, as in \"512MiB\" or \"10G\"", s)
	}
	unit := strings.TrimSpace(t[i:])
	mul, ok := sizeUnits[unit]
	if !ok {
		return 0, fmt.Errorf("parse size %q: unknown unit %q; use B, KiB, MiB, GiB, TiB (powers of 1024) or K, M, G, T (powers of 1000)", s, unit)
	}
	n, err := strconv.ParseInt(t[:i], 10, 64)
	if err != nil || n > math.MaxInt64/mul {
		return 0, fmt.Errorf("parse size %q: too large", s)
	}
	return n * mul, nil
}

// ParseDuration parses a duration such as "60s", "2m" or "1m30s" (Go's
// time.ParseDuration syntax); it must be positive.
func ParseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("parse duration %q: use a number with a unit, as in \"60s\" or \"2m\"", s)
	}
	if d <= 0 {
		return 0, fmt.Errorf("parse duration %q: must be positive", s)
	}
	return d, nil
}
