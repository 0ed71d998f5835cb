package engine

import (
	"reflect"
	"testing"

	"github.com/stackvm/stack/image"
	"github.com/stackvm/stack/stackfile"
)

// imageProcess follows compose: entrypoint replaces the image's and drops
// its command, command replaces the image's command, env goes on top.
func TestImageProcess(t *testing.T) {
	img := &image.Image{Config: image.Config{
		Entrypoint: []string{"/docker-entrypoint.sh"}, Cmd: []string{"postgres"},
		Env: []string{"PATH=/usr/bin", "PGDATA=/var/lib/pg"},
	}}
	for _, c := range []struct {
		name       string
		entry, cmd []string
		env        map[string]string
		want       []string
		wantEnv    map[string]string
	}{
		{name: "image's", want: []string{"/docker-entrypoint.sh", "postgres"}},
		{name: "command", cmd: []string{"postgres", "-c", "fsync=off"}, want: []string{"/docker-entrypoint.sh", "postgres", "-c", "fsync=off"}},
		{name: "empty command", cmd: []string{}, want: []string{"/docker-entrypoint.sh"}},
		{name: "entrypoint", entry: []string{"/bin/sh"}, want: []string{"/bin/sh"}},
		{name: "both", entry: []string{"/bin/sh", "-c"}, cmd: []string{"echo hi"}, want: []string{"/bin/sh", "-c", "echo hi"}},
		{name: "env", env: map[string]string{"PGDATA": "/data", "X": "1"}, want: []string{"/docker-entrypoint.sh", "postgres"},
			wantEnv: map[string]string{"PATH": "/usr/bin", "PGDATA": "/data", "X": "1"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			vm := &stackfile.VM{Image: "pg", Entrypoint: c.entry, Command: c.cmd, Env: c.env}
			argv, env, err := imageProcess(vm, img)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(argv, c.want) {
				t.Errorf("argv %q, want %q", argv, c.want)
			}
			want := c.wantEnv
			if want == nil {
				want = map[string]string{"PATH": "/usr/bin", "PGDATA": "/var/lib/pg"}
			}
			if !reflect.DeepEqual(env, want) {
				t.Errorf("env %v, want %v", env, want)
			}
		})
	}
	if _, _, err := imageProcess(&stackfile.VM{Image: "x", Entrypoint: []string{}}, img); err == nil {
		t.Error("a VM with nothing to run was accepted")
	}
}
