package testutil

import (
	"os"
	"path/filepath"
	"strings"
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
