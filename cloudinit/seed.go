// Package cloudinit owns the NoCloud seed of cloud-init-mode VMs: it turns a
// VM's typed cloud-init inputs into the three seed files (meta-data,
// network-config, user-data), merges the user's #cloud-config document with
// what stack generates, and writes the seed as an ISO 9660 image labelled
// "cidata" that cloud-init's NoCloud datasource finds.
//
// It also defines the line the guest writes to its console once cloud-init
// has finished (ReadyLine, FailedLine), which is how the engine knows a
// cloud-init VM is ready. See docs/cloud-init.md for the contract.
package cloudinit

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"path"
	"regexp"
	"slices"
	"strings"
	"unicode"

	"github.com/stackvm/stack/internal/netaddr"
	"gopkg.in/yaml.v3"
)

// seedVersion is hashed with the inputs: bump it whenever the generated
// files change for the same input, so that existing VMs get a new seed (and
// a new instance-id, so cloud-init applies it).
const seedVersion = 2

// Input is everything that goes into one VM's seed. Names are DNS labels;
// the engine fills it from the evaluated stack and the plan's addresses.
type Input struct {
	VMName    string
	Namespace string
	// NICs in attachment order: the first is eth0.
	NICs []NIC
	// Hosts are the other VMs of the namespace; each gets an /etc/hosts
	// line "<ip> <name> <name>.<namespace>.internal".
	Hosts             []Host
	SSHAuthorizedKeys []string // each may hold several keys, one a line
	// ExecKey is stack's own public key (one authorized_keys line), which
	// `stack exec` logs in with: it is installed for root. "" for none.
	ExecKey string `json:",omitempty"`
	// HostKey, when set, becomes the guest's SSH host key, so that exec
	// knows it in advance and pins it.
	HostKey *HostKey `json:",omitempty"`
	Mounts  []Mount
	// Shares are the VM's shared directories, mounted at every boot.
	Shares []Share `json:",omitempty"`
	// UserData is the user's #cloud-config document ("" for none).
	UserData string
	// UserDataFile names where UserData came from, for error messages
	// only; it is not part of the seed's hash.
	UserDataFile string
}

// NIC is one network interface, matched in the guest by its MAC.
type NIC struct {
	MAC netaddr.MAC
	// Address is the static address and prefix length; the zero Prefix
	// means DHCP.
	Address netip.Prefix
	// Gateway, when valid, becomes the default route, but only for the
	// first NIC that has one (per address family): a second default route
	// fails to come up under ifupdown, which then leaves that NIC down.
	Gateway netip.Addr
	// DNS are the nameservers (stack passes the network's gateway).
	DNS []netip.Addr
}

// Host is another VM of the namespace.
type Host struct {
	Name string
	IP   netip.Addr
}

// Mount is a disk the guest mounts, found by its virtio-blk serial.
type Mount struct {
	Serial    string // at most 20 bytes (virtio-blk's limit)
	GuestPath string
	FSType    string // "" means ext4
}

// Share is a host directory the VMM exports under Tag (virtio-fs, or 9p
// where the host has no virtiofsd); the guest mounts it at GuestPath.
type Share struct {
	Tag       string // a DNS label (the shared_dir's name)
	GuestPath string
	ReadOnly  bool `json:",omitempty"`
}

// Seed is a generated NoCloud seed.
type Seed struct {
	// Hash is the hex SHA-256 of the normalised inputs (UserDataFile
	// excluded) and the generator version.
	Hash string
	// InstanceID is derived from Hash: it changes whenever the inputs do.
	InstanceID    string
	MetaData      []byte
	NetworkConfig []byte
	UserData      []byte
	// Warnings are user settings that stack overrode (see the merge rules);
	// the caller reports them as warnings at the user-data file.
	Warnings []string
}

// Seed file names on the ISO.
const (
	FileMetaData      = "meta-data"
	FileNetworkConfig = "network-config"
	FileUserData      = "user-data"
	// VolumeID is the label cloud-init's NoCloud datasource looks for.
	VolumeID = "cidata"
)

// Console lines written by the guest once cloud-init has finished all its
// stages. The engine looks for a console line that contains
// ReadyLine(seed.InstanceID), or ReportLine(seed.InstanceID) and then
// FailedLine(seed.InstanceID); the line may carry other output before it
// (a console is shared).
const (
	ReadyPrefix  = "STACK-READY "
	FailedPrefix = "STACK-FAILED "
	ReportPrefix = "STACK-REPORT "
)

// ReadyLine is the console text that says cloud-init finished without
// errors for this instance.
func ReadyLine(instanceID string) string { return ReadyPrefix + instanceID }

// FailedLine is the console text that says cloud-init finished and reported
// errors (a module failed) for this instance. It follows the report line.
func FailedLine(instanceID string) string { return FailedPrefix + instanceID }

// ReportLine is the console text that, followed by a space and cloud-init's
// status.json on the rest of the line, is cloud-init's report of a boot with
// errors for this instance (judged by package cloudinit/outcome).
func ReportLine(instanceID string) string { return ReportPrefix + instanceID }

// HostsDomain is the DNS suffix of a namespace: <vm>.<namespace>.internal.
func HostsDomain(namespace string) string { return namespace + ".internal" }

var (
	labelRe  = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	serialRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,19}$`)
	fsTypeRe = regexp.MustCompile(`^[a-z0-9]{1,16}$`)
)

// Build generates the seed for in. Errors in the user's document are
// returned as *UserDataError; other errors are invalid inputs (a bug in the
// caller, since the loader validates names and addresses).
func Build(in Input) (*Seed, error) {
	n, err := normalise(in)
	if err != nil {
		return nil, err
	}
	hash, err := hashInput(n)
	if err != nil {
		return nil, err
	}
	s := &Seed{Hash: hash, InstanceID: instanceID(hash)}

	s.MetaData, err = encodeYAML(metaData{InstanceID: s.InstanceID, LocalHostname: n.VMName})
	if err != nil {
		return nil, fmt.Errorf("encode meta-data: %w", err)
	}
	s.NetworkConfig, err = networkConfig(n)
	if err != nil {
		return nil, fmt.Errorf("encode network-config: %w", err)
	}
	s.UserData, s.Warnings, err = userData(n, s.InstanceID)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// checkGuestPath accepts a clean absolute path other than / without white
// space: fstab separates fields by white space, so a path with any cannot
// be mounted by cloud-init.
func checkGuestPath(p string) error {
	if !path.IsAbs(p) || path.Clean(p) != p || p == "/" ||
		strings.IndexFunc(p, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 {
		return fmt.Errorf("check mount path %q: want a clean absolute path other than / without white space", p)
	}
	return nil
}

// instanceID is the cloud-init instance-id of the seed whose inputs hash
// to hash.
func instanceID(hash string) string { return "stack-" + hash[:16] }

// Hash returns the seed hash of in without generating the seed (EnsureISO
// compares it with the sidecar). It fails on the inputs Build rejects,
// except errors inside the user's document.
func Hash(in Input) (string, error) {
	n, err := normalise(in)
	if err != nil {
		return "", err
	}
	return hashInput(n)
}

// normalise validates in and returns a copy in canonical form: MACs in
// lower case, hosts sorted by name, SSH keys split one per entry, mount
// file system types defaulted. Equal VMs give equal normalised inputs, so
// their hashes match.
func normalise(in Input) (Input, error) {
	out := Input{VMName: in.VMName, Namespace: in.Namespace, UserData: in.UserData, UserDataFile: in.UserDataFile}
	if !labelRe.MatchString(in.VMName) {
		return out, fmt.Errorf("check vm name %q: not a DNS label", in.VMName)
	}
	if !labelRe.MatchString(in.Namespace) {
		return out, fmt.Errorf("check namespace %q: not a DNS label", in.Namespace)
	}
	for i, nic := range in.NICs {
		if nic.MAC.IsZero() {
			return out, fmt.Errorf("check nic %d: no mac", i)
		}
		if nic.Address.IsValid() && nic.Address.Addr().IsUnspecified() {
			return out, fmt.Errorf("check nic %d address %s: unspecified address", i, nic.Address)
		}
		c := NIC{MAC: nic.MAC, Address: nic.Address, Gateway: nic.Gateway, DNS: slices.Clone(nic.DNS)}
		for _, d := range c.DNS {
			if !d.IsValid() {
				return out, fmt.Errorf("check nic %d dns: invalid address", i)
			}
		}
		out.NICs = append(out.NICs, c)
	}
	for _, h := range in.Hosts {
		if !labelRe.MatchString(h.Name) {
			return out, fmt.Errorf("check host name %q: not a DNS label", h.Name)
		}
		if !h.IP.IsValid() {
			return out, fmt.Errorf("check host %s: invalid address", h.Name)
		}
		out.Hosts = append(out.Hosts, h)
	}
	slices.SortFunc(out.Hosts, func(a, b Host) int { return strings.Compare(a.Name, b.Name) })
	for _, k := range in.SSHAuthorizedKeys {
		for _, line := range strings.Split(k, "\n") {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			out.SSHAuthorizedKeys = append(out.SSHAuthorizedKeys, line)
		}
	}
	for _, m := range in.Mounts {
		if !serialRe.MatchString(m.Serial) {
			return out, fmt.Errorf("check mount serial %q: want 1-20 of [A-Za-z0-9_.-]", m.Serial)
		}
		if err := checkGuestPath(m.GuestPath); err != nil {
			return out, err
		}
		fs := m.FSType
		if fs == "" {
			fs = "ext4"
		}
		if !fsTypeRe.MatchString(fs) {
			return out, fmt.Errorf("check mount fstype %q: not a file system type", fs)
		}
		out.Mounts = append(out.Mounts, Mount{Serial: m.Serial, GuestPath: m.GuestPath, FSType: fs})
	}
	for _, sh := range in.Shares {
		if !labelRe.MatchString(sh.Tag) {
			return out, fmt.Errorf("check share tag %q: not a DNS label", sh.Tag)
		}
		if err := checkGuestPath(sh.GuestPath); err != nil {
			return out, err
		}
		out.Shares = append(out.Shares, sh)
	}
	if err := normaliseSSH(in, &out); err != nil {
		return out, err
	}
	return out, nil
}

// hashInput hashes a normalised input. JSON of a struct has a fixed field
// order, and netip types marshal to their canonical text.
func hashInput(n Input) (string, error) {
	n.UserDataFile = "" // for messages only: not part of the seed
	b, err := json.Marshal(struct {
		Version int
		Input
	}{Version: seedVersion, Input: n})
	if err != nil {
		return "", fmt.Errorf("hash seed input: %w", err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

type metaData struct {
	InstanceID    string `yaml:"instance-id"`
	LocalHostname string `yaml:"local-hostname"`
}

// Network config version 2 (netplan's schema, as cloud-init reads it).
type ethernet struct {
	Match     ethMatch `yaml:"match"`
	SetName   string   `yaml:"set-name"`
	DHCP4     bool     `yaml:"dhcp4,omitempty"`
	Addresses []string `yaml:"addresses,omitempty"`
	// gateway4/6 rather than routes: cloud-init renders routes for
	// ifupdown as `route add` (net-tools, absent from minimal images) but a
	// gateway as ifupdown's own `gateway` option.
	Gateway4    string       `yaml:"gateway4,omitempty"`
	Gateway6    string       `yaml:"gateway6,omitempty"`
	Nameservers *nameservers `yaml:"nameservers,omitempty"`
}

type ethMatch struct {
	MACAddress string `yaml:"macaddress"`
}

type nameservers struct {
	Addresses []string `yaml:"addresses"`
	Search    []string `yaml:"search,omitempty"`
}

// networkConfig renders network-config. Interfaces are renamed eth0, eth1,
// ... in NIC order (match by MAC + set-name), so names do not depend on the
// guest's PCI layout. With no NICs, cloud-init's networking is disabled
// rather than left to its DHCP fallback.
func networkConfig(n Input) ([]byte, error) {
	if len(n.NICs) == 0 {
		return encodeYAML(map[string]any{"network": map[string]any{"config": "disabled"}})
	}
	eths := &yaml.Node{Kind: yaml.MappingNode}
	var have4, have6 bool
	for i, nic := range n.NICs {
		name := fmt.Sprintf("eth%d", i)
		e := ethernet{Match: ethMatch{MACAddress: nic.MAC.String()}, SetName: name}
		if nic.Address.IsValid() {
			e.Addresses = []string{nic.Address.String()}
		} else {
			e.DHCP4 = true
		}
		switch gw := nic.Gateway.Unmap(); {
		case gw.Is4() && !have4:
			e.Gateway4, have4 = gw.String(), true
		case gw.Is6() && !have6:
			e.Gateway6, have6 = gw.String(), true
		}
		if len(nic.DNS) > 0 {
			ns := &nameservers{Search: []string{HostsDomain(n.Namespace)}}
			for _, d := range nic.DNS {
				ns.Addresses = append(ns.Addresses, d.String())
			}
			e.Nameservers = ns
		}
		var v yaml.Node
		if err := v.Encode(e); err != nil {
			return nil, err
		}
		eths.Content = append(eths.Content, strNode(name), &v)
	}
	doc := mapping(
		"network", mapping(
			"version", intNode(2),
			"ethernets", eths,
		),
	)
	return encodeYAML(doc)
}

// encodeYAML encodes v as one YAML document, indented by two spaces.
func encodeYAML(v any) ([]byte, error) {
	var b strings.Builder
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return []byte(b.String()), nil
}

// yaml11Special matches strings that YAML 1.1 (PyYAML, cloud-init's parser)
// reads as booleans or sexagesimal numbers but YAML 1.2 (yaml.v3) as plain
// strings: yaml.v3 quotes them when it encodes Go strings, not nodes.
var yaml11Special = regexp.MustCompile(`^(?:[yYnN]|[Yy]es|YES|[Nn]o|NO|[Oo]n|ON|[Oo]ff|OFF|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?)$`)

// strNode is a string scalar. The encoder quotes what YAML 1.2 would read
// as another type and picks a block style for multi-line text; strings
// special only to YAML 1.1 are quoted here, so that a VM named "yes" or
// "on" stays a string for cloud-init.
func strNode(s string) *yaml.Node {
	n := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s}
	if yaml11Special.MatchString(s) {
		n.Style = yaml.DoubleQuotedStyle
	}
	return n
}

func intNode(i int) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: fmt.Sprint(i)}
}

func boolNode(b bool) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: fmt.Sprint(b)}
}

// mapping builds a mapping node from alternating string keys and nodes.
func mapping(kv ...any) *yaml.Node {
	m := &yaml.Node{Kind: yaml.MappingNode}
	for i := 0; i+1 < len(kv); i += 2 {
		m.Content = append(m.Content, strNode(kv[i].(string)), kv[i+1].(*yaml.Node))
	}
	return m
}

func seq(items ...*yaml.Node) *yaml.Node {
	return &yaml.Node{Kind: yaml.SequenceNode, Content: items}
}

// argv is a command as a YAML list: cloud-init quotes each element when it
// writes bootcmd and runcmd scripts, so no element is ever parsed by a shell.
func argv(args ...string) *yaml.Node {
	s := &yaml.Node{Kind: yaml.SequenceNode}
	for _, a := range args {
		s.Content = append(s.Content, strNode(a))
	}
	return s
}
