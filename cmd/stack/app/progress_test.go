package app

import (
	"testing"
	"time"
)

func TestRoundElapsed(t *testing.T) {
	for in, want := range map[time.Duration]string{
		4213 * time.Millisecond:                     "4.21s",
		350*time.Millisecond + 400*time.Microsecond: "350ms",
		3*time.Millisecond + 270*time.Microsecond:   "3.3ms",
		80 * time.Microsecond:                       "100µs",
	} {
		if got := roundElapsed(in).String(); got != want {
			t.Errorf("roundElapsed(%v) = %s, want %s", in, got, want)
		}
	}
}
