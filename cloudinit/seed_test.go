package cloudinit

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/stackvm/stack/guestproto"
	"github.com/stackvm/stack/internal/netaddr"
)

var update = flag.Bool("update", false, "rewrite golden files")

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func ip(s string) netip.Addr    { return netip.MustParseAddr(s) }

const key1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq3UPQ4S0m1pY5GHWjXmIuJjP3ZfYbT7t0n4D3D6b0L alice@example"
const key2 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBzv1nX8gD7yWf0V2Yq3mL2aZ0m1pY5GHWjXmIuJjP3Z bob@example"

// goldenCases are the seeds checked byte for byte against testdata.
var goldenCases = []struct {
	name string
	in   Input
}{
	{"one-nic", Input{
		VMName: "web-0", Namespace: "demo",
		NICs: []NIC{{MAC: netaddr.MustParseMAC("52:54:00:12:34:56"), Address: pfx("10.42.0.10/24"), Gateway: ip("10.42.0.1"), DNS: []netip.Addr{ip("10.42.0.1")}}},
		// Out of order on purpose: the seed sorts them.
		Hosts: []Host{{Name: "web-1", IP: ip("10.42.0.11")}, {Name: "db", IP: ip("10.42.0.2")}},
	}},
	{"two-nics", Input{
		VMName: "router", Namespace: "lab",
		NICs: []NIC{
			{MAC: netaddr.MustParseMAC("52:54:00:AA:00:01"), Address: pfx("10.1.0.5/24"), Gateway: ip("10.1.0.1"), DNS: []netip.Addr{ip("10.1.0.1")}},
			// A second gateway is not made a default route; no address
			// means DHCP.
			{MAC: netaddr.MustParseMAC("52:54:00:aa:00:02"), Gateway: ip("10.2.0.1")},
			{MAC: netaddr.MustParseMAC("52-54-00-aa-00-03"), Address: pfx("10.3.0.5/16")},
		},
	}},
	{"user-merge", Input{
		VMName: "db", Namespace: "demo",
		NICs:              []NIC{{MAC: netaddr.MustParseMAC("52:54:00:00:00:01"), Address: pfx("10.42.0.2/24"), Gateway: ip("10.42.0.1"), DNS: []netip.Addr{ip("10.42.0.1")}}},
		Hosts:             []Host{{Name: "web-0", IP: ip("10.42.0.10")}},
		SSHAuthorizedKeys: []string{key1 + "\n", "# a comment\n" + key2 + "\n\n"},
		UserData: `#cloud-config
# The user's own document: its lists are kept and stack's entries added.
hostname: mydb # stack owns this one
ssh_pwauth: yes
ssh_authorized_keys:
  - ` + key1 + `
write_files:
  - path: /etc/motd
    content: |
      hello from the user
runcmd:
  - [sh, -c, 'echo user-runcmd > /dev/console']
  - echo second
bootcmd:
  - echo user-bootcmd
mounts:
  - [tmpfs, /mnt/tmp, tmpfs, "size=16m", "0", "0"]
final_message: "user final message after $UPTIME s"
`,
		UserDataFile: "db.yaml",
	}},
	{"disks", Input{
		VMName: "db", Namespace: "demo",
		Mounts: []Mount{
			{Serial: "vol-pgdata", GuestPath: "/var/lib/postgresql"},
			{Serial: "scratch-tmp", GuestPath: "/scratch", FSType: "ext4"},
		},
		UserData: "#cloud-config\nruncmd: [echo hi]\n",
	}},
	{"shares", Input{
		VMName: "dev", Namespace: "demo",
		Shares: []Share{{Tag: "src", GuestPath: "/src", ReadOnly: true}, {Tag: "out", GuestPath: "/var/out"}},
	}},
	{"empty", Input{VMName: "solo", Namespace: "ns"}},
}

// TestSeedGolden writes each seed as an ISO, reads it back with the
// iso9660 reader and compares the files with testdata/seed/<case>/.
func TestSeedGolden(t *testing.T) {
	for _, c := range goldenCases {
		t.Run(c.name, func(t *testing.T) {
			seed, err := Build(c.in)
			if err != nil {
				t.Fatal(err)
			}
			iso := filepath.Join(t.TempDir(), "seed.iso")
			if err := WriteISO(seed, iso); err != nil {
				t.Fatal(err)
			}
			st, err := os.Stat(iso)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o600 {
				t.Errorf("iso mode %v, want 0600", st.Mode().Perm())
			}
			label, files, err := ReadISO(iso)
			if err != nil {
				t.Fatal(err)
			}
			if label != VolumeID {
				t.Errorf("label = %q, want %q", label, VolumeID)
			}
			if len(files) != 3 {
				t.Errorf("iso holds %d files, want 3: %v", len(files), keys(files))
			}
			files["warnings"] = []byte(strings.Join(seed.Warnings, "\n"))
			for _, name := range []string{FileMetaData, FileNetworkConfig, FileUserData, "warnings"} {
				golden(t, filepath.Join("testdata", "seed", c.name, name), files[name])
			}
			// The instance-id is derived from the inputs' hash.
			if !bytes.Contains(files[FileMetaData], []byte("instance-id: "+seed.InstanceID+"\n")) ||
				!strings.HasPrefix(seed.InstanceID, "stack-") || !strings.HasPrefix(seed.Hash, strings.TrimPrefix(seed.InstanceID, "stack-")) {
				t.Errorf("instance-id %q does not match hash %q", seed.InstanceID, seed.Hash)
			}
		})
	}
}

func keys(m map[string][]byte) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (run with -update to create): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (run with -update to accept):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

// needCloudInit fails when cloud-init is missing, except in -short runs,
// which skip.
func needCloudInit(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("cloud-init"); err != nil {
		if testing.Short() {
			t.Skip("cloud-init not installed (short mode)")
		}
		t.Fatalf("cloud-init not found: install the cloud-init package (make deps): %v", err)
	}
}

// TestSeedAcceptedByCloudInit runs the host's cloud-init over every golden
// seed: `cloud-init schema` validates user-data; network-config is parsed
// and rendered to ifupdown configuration by `cloud-init devel net-convert`
// (cloud-init 22.4's schema command has no network-config mode), and the
// rendered files are checked for each NIC.
func TestSeedAcceptedByCloudInit(t *testing.T) {
	needCloudInit(t)
	for _, c := range goldenCases {
		t.Run(c.name, func(t *testing.T) {
			seed, err := Build(c.in)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			ud := filepath.Join(dir, "user-data")
			if err := os.WriteFile(ud, seed.UserData, 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command("cloud-init", "schema", "--config-file", ud).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "Valid cloud-config") {
				t.Errorf("cloud-init schema rejected user-data: %v\n%s", err, out)
			}

			nc := filepath.Join(dir, "network-config")
			if err := os.WriteFile(nc, seed.NetworkConfig, 0o600); err != nil {
				t.Fatal(err)
			}
			if len(c.in.NICs) == 0 {
				// Not renderable by design: cloud-init strips the top-level
				// "network" key and then honours config: disabled.
				var v map[string]map[string]string
				if err := yaml.Unmarshal(seed.NetworkConfig, &v); err != nil || v["network"]["config"] != "disabled" {
					t.Errorf("network-config without NICs = %q, want network.config disabled", seed.NetworkConfig)
				}
				return
			}
			outDir := filepath.Join(dir, "out")
			out, err = exec.Command("cloud-init", "devel", "net-convert", "-p", nc, "-k", "yaml",
				"-d", outDir, "-D", "debian", "-O", "eni").CombinedOutput()
			if err != nil {
				t.Fatalf("cloud-init net-convert rejected network-config: %v\n%s", err, out)
			}
			eni, err := os.ReadFile(filepath.Join(outDir, "etc/network/interfaces.d/50-cloud-init"))
			if err != nil {
				t.Fatal(err)
			}
			rules, err := os.ReadFile(filepath.Join(outDir, "etc/udev/rules.d/70-persistent-net.rules"))
			if err != nil {
				t.Fatal(err)
			}
			gateways := 0
			for i, nic := range c.in.NICs {
				name := fmt.Sprintf("eth%d", i)
				mac := nic.MAC.String()
				if !strings.Contains(string(rules), fmt.Sprintf(`ATTR{address}=="%s", NAME="%s"`, mac, name)) {
					t.Errorf("no udev rename of %s to %s:\n%s", mac, name, rules)
				}
				stanza := fmt.Sprintf("iface %s inet static\n    address %s\n", name, nic.Address)
				if !nic.Address.IsValid() {
					stanza = fmt.Sprintf("iface %s inet dhcp", name)
				}
				if !strings.Contains(string(eni), stanza) {
					t.Errorf("rendered config lacks %q:\n%s", stanza, eni)
				}
				if nic.Gateway.IsValid() && gateways == 0 {
					gateways++
					if !strings.Contains(string(eni), "gateway "+nic.Gateway.String()+"\n") {
						t.Errorf("rendered config lacks the gateway %s:\n%s", nic.Gateway, eni)
					}
				}
				for _, d := range nic.DNS {
					if !strings.Contains(string(eni), "dns-nameservers "+d.String()) {
						t.Errorf("rendered config lacks nameserver %s:\n%s", d, eni)
					}
				}
			}
			if n := strings.Count(string(eni), "    gateway "); n != gateways {
				t.Errorf("rendered config has %d gateways, want %d:\n%s", n, gateways, eni)
			}
		})
	}
}

// decodeUserData parses generated user-data into a generic value.
func decodeUserData(t testing.TB, b []byte) map[string]any {
	t.Helper()
	if !bytes.HasPrefix(b, []byte(Header+"\n")) {
		t.Fatalf("user-data does not start with %s:\n%s", Header, b)
	}
	var v any
	if err := yaml.Unmarshal(b, &v); err != nil {
		t.Fatalf("generated user-data is not YAML: %v\n%s", err, b)
	}
	m, ok := stringKeys(v)
	if !ok {
		t.Fatalf("generated user-data is not a mapping:\n%s", b)
	}
	return m
}

// stringKeys returns the string-keyed entries of a decoded YAML mapping
// (yaml.v3 gives map[any]any when some key is not a string).
func stringKeys(v any) (map[string]any, bool) {
	switch m := v.(type) {
	case map[string]any:
		return m, true
	case map[any]any:
		out := map[string]any{}
		for k, e := range m {
			if ks, ok := k.(string); ok {
				out[ks] = e
			}
		}
		return out, true
	}
	return nil, false
}

func TestUserDataMergeRules(t *testing.T) {
	in := goldenCases[2].in // user-merge
	seed, err := Build(in)
	if err != nil {
		t.Fatal(err)
	}
	m := decodeUserData(t, seed.UserData)

	// Owned scalars: stack's values, with a warning for the user's hostname.
	want := map[string]any{"hostname": "db", "fqdn": "db.demo.internal", "preserve_hostname": false, "manage_etc_hosts": "localhost"}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %#v, want %#v", k, m[k], v)
		}
	}
	if len(seed.Warnings) != 1 || !strings.Contains(seed.Warnings[0], "hostname") || !strings.Contains(seed.Warnings[0], "line 3") {
		t.Errorf("warnings = %q, want one about hostname at line 3", seed.Warnings)
	}
	// The user's scalars are kept as written (yes stays a YAML 1.1 bool
	// for cloud-init, so it must not be quoted).
	if !bytes.Contains(seed.UserData, []byte("\nssh_pwauth: yes\n")) {
		t.Errorf("ssh_pwauth not kept as written:\n%s", seed.UserData)
	}
	if m["final_message"] != "user final message after $UPTIME s" {
		t.Errorf("final_message = %#v", m["final_message"])
	}
	// Lists: the user's entries first, then stack's; keys deduplicated.
	if got := m["ssh_authorized_keys"]; !reflect.DeepEqual(got, []any{key1, key2}) {
		t.Errorf("ssh_authorized_keys = %#v, want user's key1 then key2 once each", got)
	}
	if got := m["runcmd"]; !reflect.DeepEqual(got, []any{[]any{"sh", "-c", "echo user-runcmd > /dev/console"}, "echo second"}) {
		t.Errorf("runcmd = %#v, want the user's entries unchanged", got)
	}
	wf := m["write_files"].([]any)
	if len(wf) != 1 || wf[0].(map[string]any)["path"] != "/etc/motd" {
		t.Errorf("write_files = %#v", wf)
	}
	mounts := m["mounts"].([]any)
	if len(mounts) != 1 || mounts[0].([]any)[0] != "tmpfs" {
		t.Errorf("mounts = %#v, want the user's tmpfs only (no disks)", mounts)
	}
	// bootcmd: stack's two entries first, then the user's.
	boot := m["bootcmd"].([]any)
	if len(boot) != 3 || boot[2] != "echo user-bootcmd" {
		t.Fatalf("bootcmd = %#v", boot)
	}
	hosts := boot[0].([]any)
	if hosts[3] != "stack-hosts" || hosts[4] != "10.42.0.10 web-0 web-0.demo.internal" || len(hosts) != 5 {
		t.Errorf("hosts command = %#v", hosts)
	}
	ready := boot[1].([]any)
	if ready[3] != "stack-ready" || ready[4] != ReadyLine(seed.InstanceID) || ready[5] != FailedLine(seed.InstanceID) {
		t.Errorf("ready command = %#v", ready)
	}
}

func TestUserDataMergeDisks(t *testing.T) {
	seed, err := Build(goldenCases[3].in)
	if err != nil {
		t.Fatal(err)
	}
	m := decodeUserData(t, seed.UserData)
	want := []any{
		[]any{"/dev/disk/by-id/virtio-vol-pgdata", "/var/lib/postgresql", "ext4", "defaults,nofail", "0", "2"},
		[]any{"/dev/disk/by-id/virtio-scratch-tmp", "/scratch", "ext4", "defaults,nofail", "0", "2"},
	}
	if !reflect.DeepEqual(m["mounts"], want) {
		t.Errorf("mounts = %#v, want %#v", m["mounts"], want)
	}
	if !reflect.DeepEqual(m["runcmd"], []any{"echo hi"}) {
		t.Errorf("runcmd = %#v", m["runcmd"])
	}
}

func TestUserDataAliasesAndMergeKeys(t *testing.T) {
	in := Input{VMName: "a", Namespace: "n", SSHAuthorizedKeys: []string{key2}, UserData: `#CLOUD-CONFIG
base: &base
  runcmd: &cmds [echo one]
  package_update: false
<<: *base
bootcmd: *cmds
ssh_authorized_keys: &keys [` + key1 + `]
users:
  - name: alice
    ssh_authorized_keys: *keys
`}
	seed, err := Build(in)
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(seed.UserData, &doc); err != nil {
		t.Fatal(err)
	}
	if n := anchorsAndAliases(&doc); n != 0 {
		t.Errorf("%d anchors or aliases left in the output:\n%s", n, seed.UserData)
	}
	m := decodeUserData(t, seed.UserData)
	if !reflect.DeepEqual(m["runcmd"], []any{"echo one"}) || m["package_update"] != false {
		t.Errorf("merge key not resolved: runcmd=%#v package_update=%#v", m["runcmd"], m["package_update"])
	}
	boot := m["bootcmd"].([]any)
	if len(boot) != 3 || boot[2] != "echo one" {
		t.Errorf("bootcmd = %#v", boot)
	}
	// The alias users[0].ssh_authorized_keys keeps the user's keys only,
	// while the top-level list gets stack's.
	if !reflect.DeepEqual(m["ssh_authorized_keys"], []any{key1, key2}) {
		t.Errorf("ssh_authorized_keys = %#v", m["ssh_authorized_keys"])
	}
	users := m["users"].([]any)
	if !reflect.DeepEqual(users[0].(map[string]any)["ssh_authorized_keys"], []any{key1}) {
		t.Errorf("users[0].ssh_authorized_keys = %#v", users[0])
	}
}

func anchorsAndAliases(n *yaml.Node) int {
	c := 0
	if n.Anchor != "" || n.Kind == yaml.AliasNode {
		c++
	}
	for _, ch := range n.Content {
		c += anchorsAndAliases(ch)
	}
	return c
}

func TestUserDataErrors(t *testing.T) {
	laughs := "#cloud-config\na: &a [x, x, x, x, x, x, x, x, x, x]\n"
	prev := "a"
	for i := 0; i < 8; i++ {
		name := fmt.Sprintf("l%d", i)
		laughs += fmt.Sprintf("%s: &%s [*%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s]\n", name, name, prev, prev, prev, prev, prev, prev, prev, prev, prev, prev)
		prev = name
	}
	cases := []struct {
		name, data string
		line       int
		msg        string
	}{
		{"no header", "runcmd: [ls]\n", 1, `must start with "#cloud-config"`},
		{"shell script", "\n#!/bin/sh\necho hi\n", 2, `must start with "#cloud-config"`},
		{"bad yaml", "#cloud-config\nruncmd: [ls]\nbad: x: y\n", 3, "invalid YAML: mapping values are not allowed"},
		// yaml.v3 reports the line where the enclosing construct starts
		// for some parser errors; the error carries that line as is.
		{"unclosed flow", "#cloud-config\nruncmd:\n  - ls\nbad: [\n", 4, "invalid YAML"},
		{"tab indent", "#cloud-config\nruncmd:\n\t- ls\n", 3, "invalid YAML"},
		{"list", "#cloud-config\n- a\n- b\n", 2, "must be a YAML mapping"},
		{"scalar", "#cloud-config\n\nhello\n", 3, "must be a YAML mapping"},
		{"two documents", "#cloud-config\na: 1\n---\nb: 2\n", 3, "one YAML document"},
		{"runcmd not a list", "#cloud-config\npackages: []\nbootcmd: echo hi\n", 3, "bootcmd must be a list"},
		{"ssh keys not a list", "#cloud-config\nssh_authorized_keys: {a: b}\n", 2, "ssh_authorized_keys must be a list"},
		{"duplicate key", "#cloud-config\nruncmd: [a]\nfoo: 1\nruncmd: [b]\n", 4, "already set at line 2"},
		{"bad merge", "#cloud-config\n<<: 5\n", 2, "merge key"},
		{"billion laughs", laughs, 0, "too large"},
		{"list as key", "#cloud-config\na:\n  ? [x, y]\n  : z\n", 3, "mapping key must be a scalar"},
		{"undefined alias", "#cloud-config\na: *nope\n", 0, "unknown anchor"}, // yaml.v3 gives no line
		// The node parser accepts these; cloud-init (and a value decoder)
		// would not (fuzz findings).
		{"bad base64", "#cloud-config\nruncmd: [a]\nx: !!binary 0\n", 3, "invalid YAML"},
		{"same integer key", "#cloud-config\nwrite_files:\n  - {0: a, 00: b}\n", 3, "same key as \"0\" at line 3"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := Input{VMName: "a", Namespace: "n", UserData: c.data, UserDataFile: "/src/ud.yaml"}
			if c.name == "ssh keys not a list" {
				in.SSHAuthorizedKeys = []string{key1}
			}
			_, err := Build(in)
			var ue *UserDataError
			if !errors.As(err, &ue) {
				t.Fatalf("err = %v (%T), want *UserDataError", err, err)
			}
			if c.line != 0 && ue.Line != c.line {
				t.Errorf("line = %d, want %d (%v)", ue.Line, c.line, err)
			}
			if !strings.Contains(ue.Msg, c.msg) || ue.File != "/src/ud.yaml" {
				t.Errorf("err = %v, want file /src/ud.yaml and %q", err, c.msg)
			}
			if c.line > 0 && !strings.Contains(err.Error(), fmt.Sprintf("/src/ud.yaml:%d: ", c.line)) {
				t.Errorf("message %q lacks file:line", err)
			}
		})
	}
}

// TestUserDataLineEnds: the header line may end in LF, CRLF or a lone CR
// (a line break in YAML); the user's keys after it are kept in each case.
// A lone CR used to make the whole document the header line, and its keys
// vanished (found by FuzzUserDataMerge).
func TestUserDataLineEnds(t *testing.T) {
	for _, ud := range []string{"#cloud-config\nruncmd: [x]\n", "#cloud-config\r\nruncmd: [x]\r\n", "#cloud-config\rruncmd: [x]\r"} {
		seed, err := Build(Input{VMName: "a", Namespace: "n", UserData: ud})
		if err != nil {
			t.Errorf("user data %q: %v", ud, err)
			continue
		}
		if m := decodeUserData(t, seed.UserData); !reflect.DeepEqual(m["runcmd"], []any{"x"}) {
			t.Errorf("user data %q: runcmd = %#v, want [x]", ud, m["runcmd"])
		}
	}
}

func TestUserDataEmptyForms(t *testing.T) {
	for _, ud := range []string{"", "  \n", "#cloud-config", "#cloud-config\n", "#cloud-config\n# nothing\n", "#cloud-config\n~\n", "#cloud-config\n---\n"} {
		seed, err := Build(Input{VMName: "a", Namespace: "n", UserData: ud})
		if err != nil {
			t.Errorf("user data %q: %v", ud, err)
			continue
		}
		if m := decodeUserData(t, seed.UserData); m["hostname"] != "a" || len(m["bootcmd"].([]any)) != 2 {
			t.Errorf("user data %q: got %v", ud, m)
		}
	}
}

func TestInvalidInputs(t *testing.T) {
	good := func() Input {
		return Input{VMName: "a", Namespace: "n",
			NICs:   []NIC{{MAC: netaddr.MustParseMAC("52:54:00:00:00:01")}},
			Hosts:  []Host{{Name: "b", IP: ip("10.0.0.2")}},
			Mounts: []Mount{{Serial: "d", GuestPath: "/d"}},
			Shares: []Share{{Tag: "s", GuestPath: "/s"}}}
	}
	if _, err := Build(good()); err != nil {
		t.Fatalf("baseline input: %v", err)
	}
	for name, mutate := range map[string]func(*Input){
		"vm name":       func(in *Input) { in.VMName = "A_b" },
		"namespace":     func(in *Input) { in.Namespace = "" },
		"mac":           func(in *Input) { in.NICs[0].MAC = netaddr.MAC{} },
		"address":       func(in *Input) { in.NICs[0].Address = pfx("0.0.0.0/0") },
		"dns":           func(in *Input) { in.NICs[0].DNS = []netip.Addr{{}} },
		"host name":     func(in *Input) { in.Hosts[0].Name = "b c" },
		"host ip":       func(in *Input) { in.Hosts[0].IP = netip.Addr{} },
		"serial":        func(in *Input) { in.Mounts[0].Serial = "this-serial-is-too-long" },
		"serial chars":  func(in *Input) { in.Mounts[0].Serial = "a b" },
		"relative path": func(in *Input) { in.Mounts[0].GuestPath = "d" },
		"root path":     func(in *Input) { in.Mounts[0].GuestPath = "/" },
		"unclean path":  func(in *Input) { in.Mounts[0].GuestPath = "/a/../b" },
		"space in path": func(in *Input) { in.Mounts[0].GuestPath = "/a b" },
		"fstype":        func(in *Input) { in.Mounts[0].FSType = "ext4,rw" },
		"share tag":     func(in *Input) { in.Shares[0].Tag = "s t" },
		"share path":    func(in *Input) { in.Shares[0].GuestPath = "/s t" },
	} {
		in := good()
		mutate(&in)
		if _, err := Build(in); err == nil {
			t.Errorf("%s: Build accepted %+v", name, in)
		}
		if _, err := Hash(in); err == nil {
			t.Errorf("%s: Hash accepted %+v", name, in)
		}
	}
}

// clone deep-copies an input so that tests can change it freely.
func clone(in Input) Input {
	in.NICs = append([]NIC(nil), in.NICs...)
	in.Hosts = append([]Host(nil), in.Hosts...)
	in.SSHAuthorizedKeys = append([]string(nil), in.SSHAuthorizedKeys...)
	in.Mounts = append([]Mount(nil), in.Mounts...)
	return in
}

func TestInstanceIDFollowsInputs(t *testing.T) {
	base := func() Input { return clone(goldenCases[2].in) }
	id := func(in Input) string {
		t.Helper()
		s, err := Build(in)
		if err != nil {
			t.Fatal(err)
		}
		h, err := Hash(in)
		if err != nil || h != s.Hash {
			t.Fatalf("Hash = %q, %v; Build's hash %q", h, err, s.Hash)
		}
		return s.InstanceID
	}
	ref := id(base())

	a := base()
	a.UserDataFile = "other.yaml"
	if id(a) != ref {
		t.Error("instance-id changed with UserDataFile, which is for messages only")
	}
	a, b := base(), base()
	a.Hosts = []Host{{Name: "x", IP: ip("10.0.0.1")}, {Name: "web-0", IP: ip("10.42.0.10")}}
	b.Hosts = []Host{{Name: "web-0", IP: ip("10.42.0.10")}, {Name: "x", IP: ip("10.0.0.1")}}
	if id(a) != id(b) {
		t.Error("instance-id depends on the order of hosts")
	}

	for name, mutate := range map[string]func(*Input){
		"vm name":   func(in *Input) { in.VMName = "db2" },
		"namespace": func(in *Input) { in.Namespace = "other" },
		"address":   func(in *Input) { in.NICs[0].Address = pfx("10.42.0.3/24") },
		"gateway":   func(in *Input) { in.NICs[0].Gateway = ip("10.42.0.254") },
		"dns":       func(in *Input) { in.NICs[0].DNS = nil },
		"mac":       func(in *Input) { in.NICs[0].MAC = netaddr.MustParseMAC("52:54:00:00:00:02") },
		"hosts":     func(in *Input) { in.Hosts = nil },
		"host ip":   func(in *Input) { in.Hosts = []Host{{Name: "web-0", IP: ip("10.42.0.99")}} },
		"ssh keys":  func(in *Input) { in.SSHAuthorizedKeys = in.SSHAuthorizedKeys[:1] },
		"mounts":    func(in *Input) { in.Mounts = []Mount{{Serial: "x", GuestPath: "/x"}} },
		"user data": func(in *Input) { in.UserData += "timezone: UTC\n" },
	} {
		in := base()
		mutate(&in)
		if id(in) == ref {
			t.Errorf("%s: instance-id did not change", name)
		}
	}
}

func TestReadyLines(t *testing.T) {
	if ReadyLine("stack-0123") != "STACK-READY stack-0123" || FailedLine("stack-0123") != "STACK-FAILED stack-0123" {
		t.Errorf("ready/failed lines = %q, %q", ReadyLine("stack-0123"), FailedLine("stack-0123"))
	}
}

func TestEnsureISO(t *testing.T) {
	dir := t.TempDir()
	iso := filepath.Join(dir, "vm", "seed.iso")
	in := goldenCases[0].in

	seed, rebuilt, err := EnsureISO(in, iso)
	if err != nil || !rebuilt {
		t.Fatalf("first EnsureISO = %v, %v; want rebuilt", rebuilt, err)
	}
	sidecar, err := os.ReadFile(iso + ".hash")
	image, _ := os.ReadFile(iso)
	if want := fmt.Sprintf("%s %x\n", seed.Hash, sha256.Sum256(image)); err != nil || string(sidecar) != want {
		t.Fatalf("sidecar = %q, %v; want %q (input hash, image digest)", sidecar, err, want)
	}
	if id, err := RecordedInstanceID(iso); err != nil || id != seed.InstanceID {
		t.Errorf("RecordedInstanceID = %q, %v; want %q", id, err, seed.InstanceID)
	}
	for _, p := range []string{iso, iso + ".hash"} {
		if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, mode want 0600", p, err)
		}
	}
	st1, _ := os.Stat(iso)

	check := func(name string, in Input, wantRebuilt bool) {
		t.Helper()
		s, rebuilt, err := EnsureISO(in, iso)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if rebuilt != wantRebuilt {
			t.Errorf("%s: rebuilt = %v, want %v", name, rebuilt, wantRebuilt)
		}
		_, files, err := ReadISO(iso)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(files[FileMetaData], s.MetaData) {
			t.Errorf("%s: the ISO's meta-data is not the current seed's", name)
		}
	}
	same := in
	same.UserDataFile = "elsewhere.yaml"
	check("same inputs", same, false)
	if st2, _ := os.Stat(iso); !st2.ModTime().Equal(st1.ModTime()) {
		t.Error("ISO rewritten although the inputs did not change")
	}
	changed := in
	changed.VMName = "web-9"
	check("changed inputs", changed, true)
	check("changed inputs again", changed, false)
	if err := os.Remove(iso); err != nil {
		t.Fatal(err)
	}
	check("missing ISO", changed, true)
	if err := os.WriteFile(iso+".hash", []byte("garbage\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	check("stale sidecar", changed, true)
	// An image that did not reach the disk before a crash (it is not
	// fsync'd): empty, or cut short.
	if err := os.Truncate(iso, 0); err != nil {
		t.Fatal(err)
	}
	check("empty ISO", changed, true)
	if err := os.Truncate(iso, 4096); err != nil {
		t.Fatal(err)
	}
	check("torn ISO", changed, true)
	check("torn ISO rewritten", changed, false)

	bad := in
	bad.UserData = "not cloud-config"
	if _, _, err := EnsureISO(bad, iso); err == nil {
		t.Error("EnsureISO accepted bad user data")
	}
	ents, _ := os.ReadDir(filepath.Dir(iso))
	if len(ents) != 2 {
		t.Errorf("VM directory holds %d entries, want seed.iso and its hash (no temporary files)", len(ents))
	}
}

// BenchmarkSeed measures one VM's seed: generation plus the ISO written
// atomically. BenchmarkSeedBaseline writes the same three files as plain
// files the same way (temporary file, rename), as the yardstick
// for the ratio.
func BenchmarkSeed(b *testing.B) {
	in := goldenCases[2].in
	path := filepath.Join(b.TempDir(), "seed.iso")
	b.ReportAllocs()
	for b.Loop() {
		s, err := Build(in)
		if err != nil {
			b.Fatal(err)
		}
		if err := WriteISO(s, path); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSeedBaseline(b *testing.B) {
	s, err := Build(goldenCases[2].in)
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	b.ReportAllocs()
	for b.Loop() {
		for _, f := range []struct {
			name string
			data []byte
		}{{FileMetaData, s.MetaData}, {FileNetworkConfig, s.NetworkConfig}, {FileUserData, s.UserData}} {
			if err := writeAtomic(filepath.Join(dir, f.name), func(w io.Writer) error {
				_, err := w.Write(f.data)
				return err
			}); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkBuild is generation alone (no I/O).
func BenchmarkBuild(b *testing.B) {
	in := goldenCases[2].in
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Build(in); err != nil {
			b.Fatal(err)
		}
	}
}

// TestYAML11Words checks that names YAML 1.1 reads as booleans stay
// strings for cloud-init's PyYAML: they are DNS labels, so valid VM names.
func TestYAML11Words(t *testing.T) {
	for _, name := range []string{"yes", "no", "on", "off", "y", "n"} {
		seed, err := Build(Input{VMName: name, Namespace: "ns", Hosts: []Host{{Name: name, IP: ip("10.0.0.9")}}})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(seed.UserData, []byte("\nhostname: \""+name+"\"\n")) {
			t.Errorf("hostname %q not quoted:\n%s", name, seed.UserData)
		}
		if !bytes.Contains(seed.MetaData, []byte("local-hostname: \""+name+"\"\n")) {
			t.Errorf("local-hostname %q not quoted:\n%s", name, seed.MetaData)
		}
	}
}

// TestHostsScript runs the /etc/hosts script on a file: the block is
// replaced on each run, and lines outside it (the user's, cloud-init's)
// stay.
func TestHostsScript(t *testing.T) {
	f := filepath.Join(t.TempDir(), "hosts")
	if err := os.WriteFile(f, []byte("127.0.0.1 localhost\n192.0.2.7 mine # user\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(lines ...string) string {
		t.Helper()
		cmd := exec.Command("sh", append([]string{"-c", hostsScript, "stack-hosts"}, lines...)...)
		cmd.Env = append(os.Environ(), "STACK_HOSTS_FILE="+f)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("hosts script: %v\n%s", err, out)
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	got := run("10.0.0.2 db db.ns.internal", "10.0.0.3 web web.ns.internal")
	want := "127.0.0.1 localhost\n192.0.2.7 mine # user\n# BEGIN stack-managed hosts\n10.0.0.2 db db.ns.internal\n10.0.0.3 web web.ns.internal\n# END stack-managed hosts\n"
	if got != want {
		t.Fatalf("first run:\n%s\nwant:\n%s", got, want)
	}
	// cloud-init's manage_etc_hosts: localhost appends its line after ours.
	if err := os.WriteFile(f, []byte(got+"127.0.1.1\tvm.ns.internal\tvm\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got = run("10.0.0.9 db db.ns.internal")
	want = "127.0.0.1 localhost\n192.0.2.7 mine # user\n127.0.1.1\tvm.ns.internal\tvm\n# BEGIN stack-managed hosts\n10.0.0.9 db db.ns.internal\n# END stack-managed hosts\n"
	if got != want {
		t.Fatalf("second run:\n%s\nwant:\n%s", got, want)
	}
	if got = run(); !strings.HasSuffix(got, "vm\n# BEGIN stack-managed hosts\n# END stack-managed hosts\n") {
		t.Fatalf("run without hosts:\n%s", got)
	}
}

// TestReadyScriptSyntax checks the ready script, and the waiter it writes,
// with the shell's parser; the boot test runs them for real.
func TestReadyScriptSyntax(t *testing.T) {
	if out, err := exec.Command("sh", "-n", "-c", readyScript).CombinedOutput(); err != nil {
		t.Fatalf("ready script: %v\n%s", err, out)
	}
	if out, err := exec.Command("sh", "-n", "-c", sharesScript).CombinedOutput(); err != nil {
		t.Fatalf("shares script: %v\n%s", err, out)
	}
	_, rest, ok := strings.Cut(readyScript, "<<'WAITER'\n")
	waiter, _, ok2 := strings.Cut(rest, "\nWAITER\n")
	if !ok || !ok2 {
		t.Fatal("no WAITER here-document in the ready script")
	}
	if out, err := exec.Command("sh", "-n", "-c", waiter).CombinedOutput(); err != nil {
		t.Fatalf("waiter: %v\n%s", err, out)
	}
}

// BenchmarkEnsureISOUnchanged is the cost of `up` finding a VM's seed
// current: generation, the sidecar read and the image's digest check.
func BenchmarkEnsureISOUnchanged(b *testing.B) {
	in := goldenCases[2].in
	path := filepath.Join(b.TempDir(), "seed.iso")
	if _, _, err := EnsureISO(in, path); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, rebuilt, err := EnsureISO(in, path); err != nil || rebuilt {
			b.Fatalf("rebuilt = %v, err = %v", rebuilt, err)
		}
	}
}

// TestSharesScriptMounts runs the shares script with stand-ins for mount and
// mountpoint: each share is tried over virtio-fs, then over 9p with the 9p
// options and its mode, and one that cannot be mounted is said on the
// console (here: stdout) without stopping the others.
func TestSharesScriptMounts(t *testing.T) {
	bin, dirs := t.TempDir(), t.TempDir()
	log := filepath.Join(bin, "mounts")
	stub := func(name, body string) {
		if err := os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\n"+body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	stub("mountpoint", "exit 1\n")
	// virtio-fs is never there; 9p works for every tag but "broken".
	stub("mount", `echo "$*" >> `+log+`
case "$2:$5" in
  virtiofs:*|9p:broken) exit 32 ;;
esac
`)
	script := strings.ReplaceAll(sharesScript, "/dev/console", "/dev/stdout")
	cmd := exec.Command("sh", "-c", script, "stack-shares", guestproto.NinePMountOptions,
		"src", filepath.Join(dirs, "src"), "ro", "broken", filepath.Join(dirs, "b"), "rw", "out", filepath.Join(dirs, "out"), "rw")
	cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("shares script: %v\n%s", err, out)
	}
	if want := "stack: shared dir broken: cannot mount it on " + filepath.Join(dirs, "b") + "\n"; string(out) != want {
		t.Fatalf("console: %q, want %q", out, want)
	}
	got, _ := os.ReadFile(log)
	var want strings.Builder
	for _, m := range []struct{ tag, dir, mode string }{{"src", "src", "ro"}, {"broken", "b", "rw"}, {"out", "out", "rw"}} {
		dir := filepath.Join(dirs, m.dir)
		fmt.Fprintf(&want, "-t virtiofs -o %s %s %s\n-t 9p -o %s,%s %s %s\n", m.mode, m.tag, dir, m.mode, guestproto.NinePMountOptions, m.tag, dir)
	}
	if string(got) != want.String() {
		t.Fatalf("mounts:\n%s\nwant:\n%s", got, want.String())
	}
}
