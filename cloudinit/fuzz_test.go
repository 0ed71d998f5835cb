package cloudinit

import (
	"errors"
	"reflect"
	"testing"

	"gopkg.in/yaml.v3"
)

// FuzzUserDataMerge feeds arbitrary user data through the merge. Bad input
// must give a *UserDataError, never a panic; accepted input must give one
// #cloud-config YAML mapping that holds stack's keys, stack's bootcmd
// entries first, and every other top-level value of the user unchanged.
func FuzzUserDataMerge(f *testing.F) {
	for _, c := range goldenCases {
		f.Add(c.in.UserData)
	}
	for _, s := range []string{
		"#cloud-config\nruncmd: [a, [b, c]]\nbootcmd: ~\nmounts: []\n",
		"#cloud-config\nbase: &b {runcmd: [x]}\n<<: *b\nssh_authorized_keys: [k]\n",
		"#cloud-config\n<<: [{a: 1}, {a: 2, b: 3}]\n",
		"#cloud-config\nx: !!binary aGVsbG8=\ny: !custom z\n",
		"#cloud-config\n? [complex, key]\n: value\n",
		"#cloud-config\nruncmd: {a: b}\n",
		"#cloud-config\nhostname: [1]\nmanage_etc_hosts: true\n",
		"#cloud-config\na: 'yes'\nb: yes\nc: 0755\nd: 1:20\n",
		"#cloud-config\nwrite_files:\n- content: |\n    line\n  path: /x\n",
		"#cloud-config\n---\na: 1\n",
		"#cloud-config\n- list\n",
		"no header",
		"#cloud-config\na: *undefined\n",
		"#cloud-config\n# only a comment\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, userData string) {
		in := Input{VMName: "vm", Namespace: "ns", UserData: userData,
			SSHAuthorizedKeys: []string{"ssh-ed25519 AAAA stack@key"},
			Hosts:             []Host{{Name: "other", IP: ip("10.0.0.2")}},
			Mounts:            []Mount{{Serial: "data", GuestPath: "/data"}}}
		seed, err := Build(in)
		if err != nil {
			var ue *UserDataError
			if !errors.As(err, &ue) {
				t.Fatalf("error is not a *UserDataError: %v", err)
			}
			return
		}
		out := decodeUserData(t, seed.UserData)
		for k, v := range map[string]any{"hostname": "vm", "fqdn": "vm.ns.internal", "preserve_hostname": false, "manage_etc_hosts": "localhost"} {
			if out[k] != v {
				t.Fatalf("%s = %#v, want %#v\n%s", k, out[k], v, seed.UserData)
			}
		}
		boot, _ := out["bootcmd"].([]any)
		if len(boot) < 2 {
			t.Fatalf("bootcmd = %#v", out["bootcmd"])
		}
		if c, _ := boot[0].([]any); len(c) != 5 || c[3] != "stack-hosts" {
			t.Fatalf("bootcmd[0] = %#v", boot[0])
		}
		if c, _ := boot[1].([]any); len(c) != 7 || c[4] != ReadyLine(seed.InstanceID) {
			t.Fatalf("bootcmd[1] = %#v", boot[1])
		}
		keys, _ := out["ssh_authorized_keys"].([]any)
		if len(keys) == 0 || keys[len(keys)-1] != "ssh-ed25519 AAAA stack@key" {
			t.Fatalf("ssh_authorized_keys = %#v", out["ssh_authorized_keys"])
		}
		mounts, _ := out["mounts"].([]any)
		if len(mounts) == 0 {
			t.Fatalf("mounts = %#v", out["mounts"])
		}

		// Every other key the user set (as yaml.v3 reads the user's own
		// document, merge keys resolved) is unchanged. Both documents are
		// decoded into map[string]any: yaml.v3 then turns a non-string
		// key into a string the same way on both sides, whereas decoding
		// into any keeps `0: 0` an int key but makes the same key a string
		// when it comes through a merge key (`<<: [{0: 0}]`).
		var user map[string]any
		if yaml.Unmarshal([]byte(userData), &user) != nil {
			return // yaml.v3's value decoder is stricter than its node parser
		}
		var got map[string]any
		if err := yaml.Unmarshal(seed.UserData, &got); err != nil {
			t.Fatalf("generated user-data does not decode as the user's did: %v\n%s", err, seed.UserData)
		}
		merged := map[string]bool{"bootcmd": true, "ssh_authorized_keys": true, "mounts": true}
		owned := map[string]bool{}
		for _, k := range ownedKeys {
			owned[k] = true
		}
		for k, v := range user {
			if owned[k] {
				continue
			}
			if merged[k] {
				// The user's entries come first (bootcmd: after stack's two).
				entries, _ := got[k].([]any)
				want, _ := v.([]any)
				off := 0
				if k == "bootcmd" {
					off = 2
				}
				if len(entries) < off+len(want) || !reflect.DeepEqual(entries[off:off+len(want)], want) && len(want) > 0 {
					t.Fatalf("%s: user's entries %#v not kept in %#v", k, want, entries)
				}
				continue
			}
			if !reflect.DeepEqual(got[k], v) {
				t.Fatalf("%s = %#v, want the user's %#v\n%s", k, got[k], v, seed.UserData)
			}
		}
	})
}
