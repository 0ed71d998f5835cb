package stacktest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stackvm/stack/internal/filenames"
)

// privateFixtures points the cache at a directory of the test's own that
// shares the user's cache (guest image, kernels, templates) but not its
// fixtures, so that the test sees its fixture made.
func privateFixtures(t *testing.T) {
	t.Helper()
	real, mine := filenames.CacheRoot(), t.TempDir()
	entries, _ := os.ReadDir(real)
	for _, e := range entries {
		if e.Name() == "fixtures" {
			continue
		}
		if err := os.Symlink(filepath.Join(real, e.Name()), filepath.Join(mine, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("STACK_CACHE_DIR", mine)
}

// TestSnapshotFixtures: five tests on one stack file with WithSnapshot.
// The first boots the stack, prepares it (a seed file) and saves the
// fixture; the other four restore it. Each sees the prepared state and
// none of what an earlier test wrote to its guests.
func TestSnapshotFixtures(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	privateFixtures(t)
	file := filepath.Join(t.TempDir(), "stack.hcl")
	if err := os.WriteFile(file, []byte(solo), 0o644); err != nil {
		t.Fatal(err)
	}
	prepared := 0
	seed := func(s *Stack) {
		prepared++
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if r := s.VM("solo").Exec(ctx, "sh", "-c", "echo seeded > /root/seed"); r.Code != 0 {
			s.t.Fatalf("seed: %+v", r)
		}
	}
	for i := range 5 {
		t.Run("test"+itoa(i+1), func(t *testing.T) {
			start := time.Now()
			s := Up(t, file, WithSnapshot(seed))
			t.Logf("Up took %s", time.Since(start).Round(time.Millisecond))
			vm := s.VM("solo")
			boot := vm.Status().Boot
			if (i == 0) != (boot != "snapshot") {
				t.Errorf("Up %d: boot %q (the first boots, the others restore)", i+1, boot)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			r := vm.Exec(ctx, "sh", "-c", "cat /root/seed; ls /root")
			if !strings.Contains(r.Stdout, "seeded") || strings.Contains(r.Stdout, "dirty") {
				t.Errorf("Up %d: the guest is not as prepared: %+v", i+1, r)
			}
			vm.Exec(ctx, "sh", "-c", "echo x > /root/dirty")
		})
	}
	if prepared != 1 {
		t.Errorf("prepare ran %d times, want once", prepared)
	}
}
