package cloudinit

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/stackvm/stack/internal/netaddr"
)

// Test-only keys (ed25519 from the seeds 0x01…, 0x02…, 0x03…).
const (
	hostKeyPEM = `-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtz
c2gtZWQyNTUxOQAAACCKiOPddAnxlf1S2y08ul1yymcJvx2UEhvzdIgBtA9vXAAA
AIgKc+ygCnPsoAAAAAtzc2gtZWQyNTUxOQAAACCKiOPddAnxlf1S2y08ul1yymcJ
vx2UEhvzdIgBtA9vXAAAAEABAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB
AYqI4910CfGV/VLbLTy6XXLKZwm/HZQSG/N0iAG0D29cAAAAAAECAwQF
-----END OPENSSH PRIVATE KEY-----
`
	hostKeyPub = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIqI4910CfGV/VLbLTy6XXLKZwm/HZQSG/N0iAG0D29c"
	execKey    = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIE5dw6ofRdfVqNUZsNMfszLjYqRtO43ol32D1uPybOU stack-exec@demo"
	otherPub   = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO1JKMYo0cLG6ukDOJBZlWEpWSc6XGP5NjbBRhSshzfR"
)

func sshInput() Input {
	return Input{
		VMName: "web-0", Namespace: "demo",
		NICs:    []NIC{{MAC: netaddr.MustParseMAC("52:54:00:12:34:56"), Address: pfx("10.42.0.10/24"), Gateway: ip("10.42.0.1"), DNS: []netip.Addr{ip("10.42.0.1")}}},
		ExecKey: execKey,
		HostKey: &HostKey{Private: hostKeyPEM, Public: hostKeyPub},
	}
}

// The SSH cases join the golden seeds here, so that TestSeedGolden checks
// them byte for byte and TestSeedAcceptedByCloudInit runs them through
// `cloud-init schema`.
func init() {
	merge := sshInput()
	merge.SSHAuthorizedKeys = []string{key1}
	merge.UserData = `#cloud-config
users:
  - default
  - name: alice
    ssh_authorized_keys: [` + key2 + `]
ssh_keys:
  rsa_public: ssh-rsa AAAA-not-checked-by-stack
  ed25519_public: ` + otherPub + `
`
	goldenCases = append(goldenCases,
		struct {
			name string
			in   Input
		}{"ssh", sshInput()},
		struct {
			name string
			in   Input
		}{"ssh-merge", merge},
	)
}

// Stack's exec key goes to root in a users entry (after "default" when the
// user has no users list, after the user's entries otherwise), never to
// the top-level keys; the host key goes to ssh_keys, replacing the user's
// ed25519 entries with a warning and keeping the others.
func TestSSHMerge(t *testing.T) {
	seed, err := Build(sshInput())
	if err != nil {
		t.Fatal(err)
	}
	m := decodeUserData(t, seed.UserData)
	root := map[string]any{"name": "root", "lock_passwd": false, "ssh_authorized_keys": []any{execKey}}
	if !reflect.DeepEqual(m["users"], []any{"default", root}) {
		t.Errorf("users = %#v", m["users"])
	}
	if _, ok := m["ssh_authorized_keys"]; ok {
		t.Errorf("stack's key reached the top-level keys: %#v", m["ssh_authorized_keys"])
	}
	if !reflect.DeepEqual(m["ssh_keys"], map[string]any{"ed25519_private": hostKeyPEM, "ed25519_public": hostKeyPub}) {
		t.Errorf("ssh_keys = %#v", m["ssh_keys"])
	}
	if len(seed.Warnings) != 0 {
		t.Errorf("warnings: %q", seed.Warnings)
	}

	in := goldenCases[len(goldenCases)-1].in // ssh-merge
	seed, err = Build(in)
	if err != nil {
		t.Fatal(err)
	}
	m = decodeUserData(t, seed.UserData)
	alice := map[string]any{"name": "alice", "ssh_authorized_keys": []any{key2}}
	if !reflect.DeepEqual(m["users"], []any{"default", alice, root}) {
		t.Errorf("users = %#v", m["users"])
	}
	if !reflect.DeepEqual(m["ssh_authorized_keys"], []any{key1}) {
		t.Errorf("ssh_authorized_keys = %#v", m["ssh_authorized_keys"])
	}
	want := map[string]any{"rsa_public": "ssh-rsa AAAA-not-checked-by-stack", "ed25519_public": hostKeyPub, "ed25519_private": hostKeyPEM}
	if !reflect.DeepEqual(m["ssh_keys"], want) {
		t.Errorf("ssh_keys = %#v", m["ssh_keys"])
	}
	if len(seed.Warnings) != 1 || !strings.Contains(seed.Warnings[0], "line 8: ssh_keys.ed25519_public is set by stack") {
		t.Errorf("warnings: %q", seed.Warnings)
	}

	// A users list without "default" stays without it.
	in.UserData = "#cloud-config\nusers: [{name: bob}]\nssh_keys: ~\n"
	seed, err = Build(in)
	if err != nil {
		t.Fatal(err)
	}
	m = decodeUserData(t, seed.UserData)
	if !reflect.DeepEqual(m["users"], []any{map[string]any{"name": "bob"}, root}) {
		t.Errorf("users = %#v", m["users"])
	}
	if ks, _ := m["ssh_keys"].(map[string]any); len(ks) != 2 {
		t.Errorf("ssh_keys = %#v", m["ssh_keys"])
	}
}

// Values stack cannot merge into are the user's error, with their line.
func TestSSHMergeErrors(t *testing.T) {
	for _, c := range []struct{ doc, want string }{
		{"#cloud-config\nusers: default\n", "2: users must be a list, not a scalar"},
		{"#cloud-config\nssh_keys: [a]\n", "2: ssh_keys must be a mapping, not a list"},
	} {
		in := sshInput()
		in.UserData = c.doc
		_, err := Build(in)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want %q", c.doc, err, c.want)
		}
	}
}

// Keys are checked: one authorized_keys line for exec, a private key that
// parses and whose public half is the one given.
func TestSSHInputsChecked(t *testing.T) {
	for name, mod := range map[string]func(*Input){
		"exec key on two lines": func(in *Input) { in.ExecKey = execKey + "\n" + otherPub },
		"exec key not a key":    func(in *Input) { in.ExecKey = "ssh-ed25519 nope" },
		"host key not a key": func(in *Input) {
			in.HostKey.Private = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
		},
		"host key pair mismatch": func(in *Input) { in.HostKey.Public = otherPub },
		"host public two keys":   func(in *Input) { in.HostKey.Public = hostKeyPub + "\n" + otherPub },
	} {
		in := sshInput()
		mod(&in)
		if _, err := Build(in); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// The keys are part of the seed's hash: the same keys give the same
// instance-id (so persisted keys keep a VM's seed), other keys another.
func TestSSHKeysInInstanceID(t *testing.T) {
	id := func(in Input) string {
		t.Helper()
		s, err := Build(in)
		if err != nil {
			t.Fatal(err)
		}
		return s.InstanceID
	}
	base := id(sshInput())
	if again := id(sshInput()); again != base {
		t.Fatalf("same keys, instance-id %s then %s", base, again)
	}
	in := sshInput()
	in.ExecKey = strings.Replace(execKey, "stack-exec@demo", "stack-exec@other", 1)
	if id(in) == base {
		t.Error("another exec key kept the instance-id")
	}
	in = sshInput()
	in.HostKey = nil
	if id(in) == base {
		t.Error("dropping the host key kept the instance-id")
	}
	// White space around the keys does not count.
	in = sshInput()
	in.ExecKey = "  " + execKey + "\n"
	in.HostKey.Public += "\n"
	if id(in) != base {
		t.Error("white space around the keys changed the instance-id")
	}
}

// At load time the same rules are checked without keys.
func TestCheckUserDataSSH(t *testing.T) {
	w, err := CheckUserData("#cloud-config\nusers: [default]\nssh_keys:\n  rsa_public: x\n  ed25519_private: y\n", "web", "demo")
	if err != nil || len(w) != 1 || w[0].Line != 5 || !strings.Contains(w[0].Msg, "ssh_keys.ed25519_private is set by stack") {
		t.Fatalf("warnings %+v, %v", w, err)
	}
	for doc, want := range map[string]string{
		"#cloud-config\nusers: default\n":   "users must be a list",
		"#cloud-config\nssh_keys: [a, b]\n": "ssh_keys must be a mapping",
	} {
		if _, err := CheckUserData(doc, "web", "demo"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", doc, err, want)
		}
	}
}
