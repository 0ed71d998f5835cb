package guestinit

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stackvm/stack/guestproto"
	"github.com/stackvm/stack/internal/netaddr"
)

var update = flag.Bool("update", false, "rewrite golden files")

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(p, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("read golden file (run with -update to create): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from golden file:\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func validConfig() guestproto.Config {
	return guestproto.Config{
		Version:  guestproto.Version,
		Hostname: "web-0",
		Hosts: []guestproto.Host{
			{IP: netip.MustParseAddr("10.42.0.10"), Names: []string{"web-0", "web-0.demo.internal"}},
			{IP: netip.MustParseAddr("10.42.0.11"), Names: []string{"db"}},
		},
		NICs: []guestproto.NIC{
			{MAC: netaddr.MustParseMAC("52:54:00:12:34:56"), Address: netip.MustParsePrefix("10.42.0.10/24"), Gateway: netip.MustParseAddr("10.42.0.1")},
			{MAC: netaddr.MustParseMAC("52:54:00:AB:CD:EF"), DHCP: true},
		},
		DNS:     []netip.Addr{netip.MustParseAddr("10.42.0.1")},
		Search:  []string{"demo.internal"},
		Mounts:  []guestproto.Mount{{Source: "disk:vol-data", Target: "/var/lib/data"}, {Source: "share:src", Target: "/src", ReadOnly: true}},
		Command: []string{"httpd", "-f", "-p", "80"},
		Env:     map[string]string{"GREETING": "hi"},
	}
}

func TestParseConfigPaddedDisk(t *testing.T) {
	cfg := validConfig()
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// The config disk is the JSON zero-padded to a multiple of 512.
	disk := make([]byte, (len(b)/512+1)*512)
	copy(disk, b)
	got, err := ParseConfig(disk)
	if err != nil {
		t.Fatalf("ParseConfig: %v", err)
	}
	if got.Hostname != "web-0" || len(got.NICs) != 2 || got.NICs[1].DHCP != true || got.Command[0] != "httpd" || got.Env["GREETING"] != "hi" {
		t.Errorf("ParseConfig lost fields: %+v", got)
	}
}

func TestParseConfigErrors(t *testing.T) {
	mod := func(f func(c *guestproto.Config)) []byte {
		c := validConfig()
		f(&c)
		b, _ := json.Marshal(c)
		return b
	}
	cases := map[string]struct {
		data []byte
		want string
	}{
		"empty":          {[]byte("\x00\x00\x00"), "empty"},
		"not json":       {[]byte("hello"), "parse guest config"},
		"trailing":       {[]byte(`{"version":1} {}`), "trailing"},
		"version":        {mod(func(c *guestproto.Config) { c.Version = 2 }), "version 2"},
		"hostname":       {mod(func(c *guestproto.Config) { c.Hostname = "bad name" }), "bad hostname"},
		"mac":            {[]byte(`{"version":1,"nics":[{"mac":"52:54:00","dhcp":true}]}`), "invalid MAC address"},
		"no mac":         {mod(func(c *guestproto.Config) { c.NICs[0].MAC = netaddr.MAC{} }), "no mac"},
		"dup mac":        {mod(func(c *guestproto.Config) { c.NICs[1].MAC = netaddr.MustParseMAC("52:54:00:12:34:56") }), "duplicate mac"},
		"dhcp and addr":  {mod(func(c *guestproto.Config) { c.NICs[1].Address = netip.MustParsePrefix("10.0.0.2/24") }), "both dhcp"},
		"no addr":        {mod(func(c *guestproto.Config) { c.NICs[1].DHCP = false }), "neither dhcp"},
		"addr not cidr":  {[]byte(`{"version":1,"nics":[{"mac":"52:54:00:12:34:56","address":"10.42.0.10"}]}`), "netip.ParsePrefix"},
		"addr v6":        {mod(func(c *guestproto.Config) { c.NICs[0].Address = netip.MustParsePrefix("fd00::1/64") }), "not an IPv4 CIDR"},
		"gateway":        {mod(func(c *guestproto.Config) { c.NICs[0].Gateway = netip.MustParseAddr("fd00::1") }), "gateway"},
		"bad gateway":    {[]byte(`{"version":1,"nics":[{"mac":"52:54:00:12:34:56","address":"10.42.0.10/24","gateway":"gw"}]}`), "ParseAddr"},
		"dns":            {[]byte(`{"version":1,"dns":["x"]}`), "ParseAddr"},
		"search":         {mod(func(c *guestproto.Config) { c.Search = []string{"a b"} }), "search domain"},
		"hosts ip":       {mod(func(c *guestproto.Config) { c.Hosts[0].IP = netip.Addr{} }), "hosts entry"},
		"hosts names":    {mod(func(c *guestproto.Config) { c.Hosts[0].Names = nil }), "no names"},
		"mount source":   {mod(func(c *guestproto.Config) { c.Mounts[0].Source = "vol-data" }), "disk:<serial>"},
		"mount target":   {mod(func(c *guestproto.Config) { c.Mounts[0].Target = "rel/path" }), "clean absolute path"},
		"mount root":     {mod(func(c *guestproto.Config) { c.Mounts[0].Target = "/" }), "clean absolute path"},
		"mount dotdot":   {mod(func(c *guestproto.Config) { c.Mounts[0].Target = "/a/../b" }), "clean absolute path"},
		"fstype":         {mod(func(c *guestproto.Config) { c.Mounts[0].FSType = "ntfs" }), "unsupported fstype"},
		"long serial":    {mod(func(c *guestproto.Config) { c.Mounts[0].Source = "disk:" + strings.Repeat("x", 21) }), "bad name"},
		"empty command":  {mod(func(c *guestproto.Config) { c.Command = []string{""} }), "command[0]"},
		"env name":       {mod(func(c *guestproto.Config) { c.Env = map[string]string{"A=B": "x"} }), "bad env name"},
		"unknown fields": {[]byte(`{"version":1,"hostname":"ok","future":true}`), ""},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := ParseConfig(tc.data)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("want success, got %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want error containing %q, got %v", tc.want, err)
			}
		})
	}
}

func TestRenderEtcFiles(t *testing.T) {
	cfg := validConfig()
	golden(t, "hosts.golden", RenderHosts(&cfg))
	golden(t, "resolv.conf.golden", RenderResolvConf(cfg.DNS, cfg.Search))
	// A VM not in its own hosts list maps its name to 127.0.1.1.
	cfg.Hosts = nil
	golden(t, "hosts-own.golden", RenderHosts(&cfg))
}

func TestWorkloadEnv(t *testing.T) {
	got := strings.Join(WorkloadEnv(map[string]string{"GREETING": "hi", "HOME": "/srv"}), "\n")
	want := "GREETING=hi\nHOME=/srv\nPATH=" + DefaultPath + "\nTERM=linux"
	if got != want {
		t.Errorf("WorkloadEnv:\n%s\nwant\n%s", got, want)
	}
	if got := WorkloadEnv(map[string]string{"PATH": "/opt/bin"}); got[1] != "PATH=/opt/bin" {
		t.Errorf("Env PATH must override the default: %v", got)
	}
}

func TestExitCode(t *testing.T) {
	if c := ExitCode(true, 3, false, 0); c != 3 {
		t.Errorf("exit 3: got %d", c)
	}
	if c := ExitCode(false, 0, true, 15); c != 143 {
		t.Errorf("SIGTERM: got %d, want 143", c)
	}
}

func FuzzParseConfig(f *testing.F) {
	b, _ := json.Marshal(validConfig())
	f.Add(b)
	f.Add([]byte(`{"version":1}`))
	f.Add([]byte("{\"version\":1,\"nics\":[{\"mac\":\"zz\"}]}\x00\x00"))
	f.Add([]byte(`{"version":1,"mounts":[{"source":"share:","target":"/x"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := ParseConfig(data)
		if err == nil {
			// What parses must be usable by the renderers.
			RenderHosts(cfg)
			RenderResolvConf(cfg.DNS, cfg.Search)
			WorkloadEnv(cfg.Env)
		}
	})
}

func TestParseMemInfo(t *testing.T) {
	total, avail := ParseMemInfo([]byte("MemTotal:         251432 kB\nMemFree:          200000 kB\nMemAvailable:     210044 kB\nBuffers: x kB\n"))
	if total != 251432<<10 || avail != 210044<<10 {
		t.Errorf("ParseMemInfo = %d, %d", total, avail)
	}
	if total, avail := ParseMemInfo([]byte("garbage\n")); total != 0 || avail != 0 {
		t.Errorf("ParseMemInfo of garbage = %d, %d", total, avail)
	}
}
