package testutil

import (
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ProcessesMentioning lists "pid: command line" of the processes whose
// argv contains any of subs (a test's temporary paths name its daemons).
func ProcessesMentioning(subs ...string) ([]string, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var found []string
	for _, e := range entries {
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(raw) == 0 {
			continue
		}
		cmdline := strings.ReplaceAll(string(raw), "\x00", " ")
		for _, s := range subs {
			if strings.Contains(cmdline, s) {
				found = append(found, e.Name()+": "+cmdline)
				break
			}
		}
	}
	return found, nil
}

// WaitProcessesGone polls until no process mentions any of subs (see
// ProcessesMentioning) and returns those still there after timeout.
func WaitProcessesGone(timeout time.Duration, subs ...string) ([]string, error) {
	deadline := time.Now().Add(timeout)
	for {
		left, err := ProcessesMentioning(subs...)
		if err != nil || len(left) == 0 || time.Now().After(deadline) {
			return left, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}
