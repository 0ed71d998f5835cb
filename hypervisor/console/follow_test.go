package console

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestFollow(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	if err := os.WriteFile(path, []byte("old line\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 10)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- Follow(ctx, path, -1, func(l string) bool {
			got <- l
			return l != "stop"
		})
	}()
	time.Sleep(2 * FollowInterval) // Follow has taken the current end
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("first\r\nsec")
	time.Sleep(2 * FollowInterval)
	f.WriteString("ond\n")
	f.Close()
	// Rotation: the file is replaced by a shorter one.
	time.Sleep(2 * FollowInterval)
	os.WriteFile(path, []byte("new\nstop\nnever\n"), 0o600)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	close(got)
	var lines []string
	for l := range got {
		lines = append(lines, l)
	}
	want := []string{"first", "second", "new", "stop"}
	if len(lines) != len(want) {
		t.Fatalf("lines %q, want %q", lines, want)
	}
	for i := range want {
		if lines[i] != want[i] {
			t.Fatalf("lines %q, want %q", lines, want)
		}
	}
}
