// Package proc owns process identity on Linux: a pid together with the
// process's start time (field 22 of /proc/PID/stat), so that a recorded VMM
// can be told apart from an unrelated process that reused its pid.
package proc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
)

// ErrNoProcess is returned when /proc has no entry for the pid.
var ErrNoProcess = errors.New("no such process")

// StartTime returns the start time of pid in clock ticks since boot, as the
// kernel reports it in field 22 of /proc/PID/stat. The value is stable for
// the life of the process and differs for a later process with the same pid
// (unless both started within the same clock tick, which pid allocation
// makes practically impossible).
func StartTime(pid int) (uint64, error) {
	if pid <= 0 {
		return 0, fmt.Errorf("read start time of pid %d: %w", pid, ErrNoProcess)
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
			return 0, fmt.Errorf("read start time of pid %d: %w", pid, ErrNoProcess)
		}
		return 0, fmt.Errorf("read start time of pid %d: %w", pid, err)
	}
	st, err := ParseStartTime(b)
	if err != nil {
		return 0, fmt.Errorf("read start time of pid %d: %w", pid, err)
	}
	return st, nil
}

// ParseStartTime extracts field 22 from the contents of a /proc/PID/stat
// file. The second field (comm) is in parentheses and may itself contain
// spaces and parentheses, so fields are counted from the last ')'.
func ParseStartTime(stat []byte) (uint64, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("parse /proc stat: no comm field")
	}
	// After ")" come fields 3.. separated by single spaces.
	fields := bytes.Fields(stat[i+1:])
	const idx = 22 - 3
	if len(fields) <= idx {
		return 0, fmt.Errorf("parse /proc stat: %d fields after comm, want more than %d", len(fields), idx)
	}
	v, err := strconv.ParseUint(string(fields[idx]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse /proc stat start time: %w", err)
	}
	return v, nil
}

// State returns the one-letter state of pid (field 3: R, S, D, Z, ...).
func State(pid int) (byte, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, fmt.Errorf("read state of pid %d: %w", pid, ErrNoProcess)
		}
		return 0, fmt.Errorf("read state of pid %d: %w", pid, err)
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0, fmt.Errorf("read state of pid %d: malformed stat", pid)
	}
	return b[i+2], nil
}

// Alive reports whether a process with this pid and start time exists and has
// not exited. A zombie (exited, not yet reaped by its parent) counts as gone:
// it will never run again.
func Alive(pid int, startTime uint64) bool {
	st, err := StartTime(pid)
	if err != nil || st != startTime {
		return false
	}
	s, err := State(pid)
	if err != nil {
		return false
	}
	return s != 'Z' && s != 'X'
}
