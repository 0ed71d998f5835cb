package planner

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/big"

	"github.com/stackvm/stack/internal/netaddr"
	"github.com/stackvm/stack/stackfile"
	"github.com/stackvm/stack/state"
)

// What forces a replacement.
//
// A VM is replaced when a change alters its VMM command line or what its guest
// was configured with at boot: those cannot change under a running kernel.
// Only the attributes the host side owns are updated in place: publish
// (gateway forwards), depends_on and ready (used while starting) and restart
// (the supervisor's policy), and cpu_limit (the VMM's cgroup). docs/stackfile.md carries the same table.
var vmUpdatable = map[string]bool{
	"publish":    true,
	"depends_on": true,
	"ready":      true,
	"restart":    true,
	"cpu_limit":  true,
}

func vmForces(attr string) bool { return !vmUpdatable[attr] }

// A network is replaced when its addressing changes; its gateway services
// (dhcp, dns, egress) are reconfigured in place.
func networkForces(attr string) bool { return attr == "subnet" || attr == "gateway" }

// A volume is replaced when its format changes (the data cannot be kept);
// growing it is an update, shrinking it is refused by Make.
func volumeForces(attr string) bool { return attr == "format" }

func networkAttributes(n *stackfile.Network) state.Attributes {
	a := state.Attributes{}
	set(a, "subnet", n.Subnet.String())
	set(a, "gateway", n.Gateway.String())
	set(a, "dhcp", n.DHCP)
	set(a, "dns", n.DNS)
	set(a, "egress", n.Egress)
	if len(n.EgressAllow) > 0 {
		allow := make([]string, len(n.EgressAllow))
		for i, p := range n.EgressAllow {
			allow[i] = p.String()
		}
		set(a, "egress_allow", allow)
	}
	return a
}

func volumeAttributes(v *stackfile.Volume) state.Attributes {
	a := state.Attributes{}
	set(a, "size_bytes", v.SizeBytes)
	set(a, "format", v.Format)
	return a
}

// nicAttr is how one resolved attachment appears in a VM's "network"
// attribute: everything the guest is configured with at boot.
type nicAttr struct {
	Network string      `json:"network"`
	IP      string      `json:"ip"`
	Prefix  int         `json:"prefix"`
	Gateway string      `json:"gateway"`
	MAC     netaddr.MAC `json:"mac"`
}

// diskAttr is one entry of a VM's "disk" attribute.
type diskAttr struct {
	Name      string `json:"name"`
	Volume    string `json:"volume,omitempty"`
	SizeBytes int64  `json:"size_bytes,omitempty"`
	GuestPath string `json:"guest_path,omitempty"`
}

// readyAttr shows the timeout as a duration ("2m0s") rather than
// nanoseconds.
type readyAttr struct {
	TCP     int      `json:"tcp,omitempty"`
	HTTP    string   `json:"http,omitempty"`
	Exec    []string `json:"exec,omitempty"`
	Timeout string   `json:"timeout"`
}

type healthAttr struct {
	TCP         int      `json:"tcp,omitempty"`
	HTTP        string   `json:"http,omitempty"`
	Exec        []string `json:"exec,omitempty"`
	Interval    string   `json:"interval"`
	Timeout     string   `json:"timeout"`
	Retries     int      `json:"retries"`
	StartPeriod string   `json:"start_period"`
}

// vmAttributes flattens a VM into the attributes the planner compares. Empty
// values are left out so that an absent and an empty attribute compare equal.
func vmAttributes(vm *stackfile.VM, namespace string, nics []state.NIC, nets map[string]*stackfile.Network) state.Attributes {
	a := state.Attributes{}
	set(a, "cpus", vm.CPUs)
	set(a, "memory_mb", vm.MemoryMB)
	setNonEmpty(a, "kernel", vm.Kernel)
	setNonEmpty(a, "initramfs", vm.Initramfs)
	setNonEmpty(a, "cmdline", vm.Cmdline)
	if len(vm.Command) > 0 {
		set(a, "command", vm.Command)
	}
	if len(vm.Env) > 0 {
		set(a, "env", vm.Env) // encoding/json sorts map keys
	}
	if vm.Image != "" {
		set(a, "image", vm.Image)
		// The digest the reference resolved to: a tag that moved is a
		// replacement, and the plan shows which image is run.
		setNonEmpty(a, "image_id", vm.ImageID)
		if vm.Entrypoint != nil {
			set(a, "entrypoint", vm.Entrypoint)
		}
		if vm.Command != nil && len(vm.Command) == 0 {
			set(a, "command", vm.Command) // the image's Cmd dropped
		}
		if len(vm.ImagePorts) > 0 {
			set(a, "image_ports", vm.ImagePorts) // shown, not published
		}
	}
	setNonEmpty(a, "root_disk", vm.RootDisk)
	if vm.CloudInit != nil {
		set(a, "cloud_init", vm.CloudInit)
	}
	if len(nics) > 0 {
		list := make([]nicAttr, len(nics))
		for i, n := range nics {
			list[i] = nicAttr{Network: n.Network, IP: n.IP.String(), MAC: n.MAC}
			if net := nets[n.Network]; net != nil {
				list[i].Prefix = prefixLen(net.Subnet)
				list[i].Gateway = net.Gateway.String()
			}
		}
		set(a, "network", list)
	}
	if len(vm.SharedDirs) > 0 {
		set(a, "shared_dir", vm.SharedDirs)
	}
	if len(vm.Disks) > 0 {
		list := make([]diskAttr, len(vm.Disks))
		for i, d := range vm.Disks {
			list[i] = diskAttr{Name: d.Name, Volume: d.Volume, SizeBytes: d.SizeBytes, GuestPath: d.GuestPath}
		}
		set(a, "disk", list)
	}
	if len(vm.Secrets) > 0 {
		set(a, "secret", vm.Secrets) // sensitive: its digests are recorded sealed
	}
	if len(vm.Publish) > 0 {
		set(a, "publish", vm.Publish)
	}
	if len(vm.DependsOn) > 0 {
		set(a, "depends_on", vm.DependsOn)
	}
	set(a, "ready", readyAttr{vm.Ready.TCP, vm.Ready.HTTP, vm.Ready.Exec, vm.Ready.Timeout.String()})
	if h := vm.Health; h != nil {
		// The supervisor runs it from the VM's spec: a change re-creates the VM.
		set(a, "health", healthAttr{h.TCP, h.HTTP, h.Exec, h.Interval.String(), h.Timeout.String(), h.Retries, h.StartPeriod.String()})
	}
	set(a, "restart", vm.Restart)
	set(a, "hypervisor", vm.Hypervisor)
	set(a, "machine", vm.Machine)
	if vm.MachineID != "" && vm.MachineID != stackfile.DeriveMachineID(namespace, vm.Name) {
		// Left out when derived (it never changes then), so that states
		// written before machine_id existed plan no change.
		set(a, "machine_id", vm.MachineID)
	}
	if vm.CPULimit > 0 {
		set(a, "cpu_limit", vm.CPULimit)
	}
	if vm.Accel != "" && vm.Accel != stackfile.AccelAuto {
		// Left out when auto, so that states written before accel
		// existed plan no change.
		set(a, "accel", vm.Accel)
	}
	return a
}

// RecordedVolumes returns the volumes a recorded VM's attributes use.
func RecordedVolumes(a state.Attributes) []string {
	var disks []diskAttr
	if raw := a["disk"]; raw != nil {
		_ = json.Unmarshal(raw, &disks) // written by vmAttributes; unreadable means none
	}
	var out []string
	for _, d := range disks {
		if d.Volume != "" {
			out = append(out, d.Volume)
		}
	}
	return out
}

// RecordedPublish returns the ports a recorded VM publishes.
func RecordedPublish(a state.Attributes) []stackfile.Publish {
	var out []stackfile.Publish
	if raw := a["publish"]; raw != nil {
		_ = json.Unmarshal(raw, &out) // written by vmAttributes; unreadable means none
	}
	return out
}

// RecordedDependsOn returns the VM block addresses a recorded VM waited for.
func RecordedDependsOn(a state.Attributes) []string {
	var out []string
	if raw := a["depends_on"]; raw != nil {
		_ = json.Unmarshal(raw, &out)
	}
	return out
}

func set(a state.Attributes, name string, v any) {
	raw, err := json.Marshal(v)
	if err != nil {
		// Every value here comes from the typed model: failing to encode it
		// is a programming error.
		panic(fmt.Sprintf("encode attribute %s: %v", name, err))
	}
	a[name] = raw
}

func setNonEmpty(a state.Attributes, name, v string) {
	if v != "" {
		set(a, name, v)
	}
}

// jsonEqual compares two attribute values as JSON values, not as bytes: a
// state file re-encoded by another tool (other escapes, key order, spacing,
// 1.0 for 1) records the same values and must plan no change. Values that
// do not decode are equal only byte for byte.
func jsonEqual(a, b json.RawMessage) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	if bytes.Equal(a, b) {
		return true
	}
	va, errA := decodeValue(a)
	vb, errB := decodeValue(b)
	return errA == nil && errB == nil && valueEqual(va, vb)
}

// decodeValue decodes one JSON value, numbers as json.Number (exact).
func decodeValue(raw json.RawMessage) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, fmt.Errorf("more than one JSON value")
	}
	return v, nil
}

// valueEqual compares decoded JSON values; numbers by their exact value.
func valueEqual(a, b any) bool {
	switch a := a.(type) {
	case map[string]any:
		b, ok := b.(map[string]any)
		if !ok || len(a) != len(b) {
			return false
		}
		for k, va := range a {
			vb, ok := b[k]
			if !ok || !valueEqual(va, vb) {
				return false
			}
		}
		return true
	case []any:
		b, ok := b.([]any)
		if !ok || len(a) != len(b) {
			return false
		}
		for i := range a {
			if !valueEqual(a[i], b[i]) {
				return false
			}
		}
		return true
	case json.Number:
		b, ok := b.(json.Number)
		if !ok {
			return false
		}
		ra, okA := new(big.Rat).SetString(string(a))
		rb, okB := new(big.Rat).SetString(string(b))
		return okA && okB && ra.Cmp(rb) == 0
	default: // string, bool, nil
		return a == b
	}
}
