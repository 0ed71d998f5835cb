package app

import "testing"

func TestBarLine(t *testing.T) {
	for _, tc := range []struct {
		done, total int64
		want        string
	}{
		{0, 4 << 20, "Copying [..........]   0% 0B/4MiB"},
		{1 << 20, 4 << 20, "Copying [##........]  25% 1MiB/4MiB"},
		{5 << 20, 4 << 20, "Copying [##########] 100% 5MiB/4MiB"}, // the archive is larger than its files
		{3 << 20, -1, "Copying 3MiB"},
	} {
		if got := barLine(tc.done, tc.total, 10); got != tc.want {
			t.Errorf("barLine(%d, %d) = %q, want %q", tc.done, tc.total, got, tc.want)
		}
	}
}

func TestSplitVMPath(t *testing.T) {
	for arg, want := range map[string][2]string{
		"web:/etc/hosts": {"web", "/etc/hosts"},
		"/tmp/a:b":       {"", "/tmp/a:b"},
		"./a:b":          {"", "./a:b"},
		"file":           {"", "file"},
		":x":             {"", ":x"},
	} {
		if vm, p := splitVMPath(arg); vm != want[0] || p != want[1] {
			t.Errorf("splitVMPath(%q) = %q, %q, want %q, %q", arg, vm, p, want[0], want[1])
		}
	}
}
