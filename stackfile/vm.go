package stackfile

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/stackvm/stack/guestproto"
	"github.com/stackvm/stack/image"
	"github.com/stackvm/stack/internal/netaddr"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
)

// MaxCount bounds count and the number of for_each keys of one vm block,
// like the 1024 elements range() may produce: a typo such as count = 10000
// fails at once instead of planning ten thousand VMs.
const MaxCount = 1024

// minDiskSize is the smallest volume or scratch disk: ext4 needs room.
const minDiskSize = 1 << 20

type ipKey struct {
	network string
	ip      netip.Addr
}

type portKey struct {
	protocol string
	port     int
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= ^uint32(0) >> p.Bits()
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func (l *loader) nullRequired(a *hcl.Attribute) {
	l.errorf(a.Expr.Range(), "Missing required argument", "The argument %q is required and may not be null.", a.Name)
}

func (l *loader) loadNetworks() {
	for _, name := range l.netOrder {
		d := l.networks[name]
		c, ctx := d.content, d.file.ctx
		sa := c.Attributes["subnet"]
		if sa == nil {
			continue // hcl reported the missing argument
		}
		v, ok := l.eval(sa, ctx, cty.String, scopeTop)
		if !ok {
			if v != cty.NilVal {
				l.nullRequired(sa)
			}
			continue
		}
		s := v.AsString()
		p, err := netip.ParsePrefix(s)
		if err != nil || !p.Addr().Is4() {
			l.errorf(sa.Expr.Range(), "Invalid subnet", "subnet must be an IPv4 CIDR prefix such as \"10.42.0.0/24\"; got %q.", s)
			continue
		}
		if p != p.Masked() {
			l.errorf(sa.Expr.Range(), "Invalid subnet", "%s has host bits set; did you mean %q?", s, p.Masked().String())
			continue
		}
		if p.Bits() > 30 {
			l.errorf(sa.Expr.Range(), "Subnet too small", "%s has no room for the network address, the gateway, a VM and the broadcast address; use a prefix of /30 or shorter, such as /24.", s)
			continue
		}
		n := &Network{Name: name, Subnet: p, Gateway: p.Addr().Next(), DeclRange: d.block.DefRange}
		if ga := c.Attributes["gateway"]; ga != nil {
			gs, ok := l.evalString(ga, ctx, scopeTop)
			if !ok {
				continue
			}
			gw, err := netip.ParseAddr(gs)
			switch {
			case err != nil || !gw.Is4():
				l.errorf(ga.Expr.Range(), "Invalid gateway", "gateway must be an IPv4 address; got %q.", gs)
				continue
			case !p.Contains(gw):
				l.errorf(ga.Expr.Range(), "Gateway outside subnet", "The gateway %s is not in the subnet %s.", gw, p)
				continue
			case gw == p.Addr() || gw == lastAddr(p):
				l.errorf(ga.Expr.Range(), "Invalid gateway", "The gateway %s is the network or broadcast address of %s.", gw, p)
				continue
			}
			n.Gateway = gw
		}
		n.DHCP = l.evalBool(c.Attributes["dhcp"], ctx, scopeTop, true)
		n.DNS = l.evalBool(c.Attributes["dns"], ctx, scopeTop, true)
		n.Egress = l.evalBool(c.Attributes["egress"], ctx, scopeTop, false)
		l.loadEgress(n, c, ctx)
		for _, other := range l.netOrder {
			o := l.netModels[other]
			if o != nil && o.Subnet.Overlaps(p) {
				l.errorf(sa.Expr.Range(), "Overlapping subnets", "The subnet %s overlaps network %q's subnet %s; a VM attached to both could not route.", p, other, o.Subnet)
			}
		}
		l.netModels[name] = n
	}
	obj := map[string]cty.Value{}
	for name, n := range l.netModels {
		obj[name] = cty.ObjectVal(map[string]cty.Value{
			"name":    cty.StringVal(name),
			"subnet":  cty.StringVal(n.Subnet.String()),
			"gateway": cty.StringVal(n.Gateway.String()),
		})
	}
	l.vars["network"] = cty.ObjectVal(obj)
}

// loadEgress reads a network's egress block: egress on, with the
// destinations it may reach besides the internet (see netswitch/gateway).
func (l *loader) loadEgress(n *Network, c *hcl.BodyContent, ctx *hcl.EvalContext) {
	var blocks []*hcl.Block
	for _, b := range c.Blocks {
		if b.Type == "egress" {
			blocks = append(blocks, b)
		}
	}
	if len(blocks) == 0 {
		return
	}
	if a := c.Attributes["egress"]; a != nil {
		l.errorf(blocks[0].DefRange, "Conflicting egress settings", "Network %q has both egress = ... and an egress block; an egress block turns egress on by itself.", n.Name)
		return
	}
	if len(blocks) > 1 {
		l.errorf(blocks[1].DefRange, "Duplicate egress block", "Network %q has more than one egress block.", n.Name)
		return
	}
	n.Egress = true
	bc, diags := blocks[0].Body.Content(egressSchema)
	for _, d := range diags {
		l.add(d)
	}
	a := bc.Attributes["allow"]
	allow, ok := l.evalStrings(a, ctx, scopeTop)
	if !ok {
		return
	}
	for _, s := range allow {
		p, err := parseAllow(s)
		if err != nil {
			l.errorf(a.Expr.Range(), "Invalid egress allow entry", "egress allow entries are IPv4 addresses or CIDR prefixes (\"192.168.1.10\", \"10.0.0.0/8\"); got %q.", s)
			continue
		}
		n.EgressAllow = append(n.EgressAllow, p)
	}
}

// parseAllow reads an egress allow entry: a prefix, or an address (/32).
func parseAllow(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil && p.Addr().Is4() {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return netip.Prefix{}, fmt.Errorf("not an IPv4 address or prefix: %q", s)
	}
	return netip.PrefixFrom(a, 32), nil
}

func (l *loader) loadVolumes() {
	for _, name := range l.volOrder {
		d := l.volumes[name]
		c, ctx := d.content, d.file.ctx
		sa := c.Attributes["size"]
		if sa == nil {
			continue
		}
		size, ok := l.evalSize(sa, ctx, scopeTop, minDiskSize)
		if !ok {
			continue
		}
		l.volModels[name] = &Volume{
			Name:      name,
			SizeBytes: size,
			Format:    l.evalEnum(c.Attributes["format"], ctx, scopeTop, validFormats, "ext4"),
			DeclRange: d.block.DefRange,
		}
	}
	obj := map[string]cty.Value{}
	// volume.NAME is the volume's name, which is what disk.volume wants;
	// declared volumes that failed stay out, so references to them are
	// not reported twice (checkRefs sees them declared).
	for name := range l.volumes {
		obj[name] = cty.StringVal(name)
	}
	l.vars["volume"] = cty.ObjectVal(obj)
}

// sub is a nested block with its decoded content.
type sub struct {
	block *hcl.Block
	c     *hcl.BodyContent
}

// vmBlock is a vm block decoded once, before its instances are evaluated.
type vmBlock struct {
	d          *decl
	sc         scope
	nics       []sub
	sharedDirs []sub
	disks      []sub
	publish    []sub
	ready      *sub
	health     *sub
	cloudInit  *sub
	secrets    []sub
}

type instance struct {
	addr, name string
	index      int
	key        string
	ctx        *hcl.EvalContext
}

type sortedVM struct {
	vm    *VM
	index int
	key   string
}

func (l *loader) loadVMs() []*VM {
	for _, name := range l.vmOrder {
		l.parseDependsOn(l.vms[name])
	}
	l.checkCycles()
	var all []sortedVM
	for _, name := range l.vmOrder {
		vb := l.decodeVMBlock(l.vms[name])
		if vb == nil {
			continue
		}
		for _, in := range l.instances(vb) {
			all = append(all, sortedVM{vm: l.buildVM(vb, in), index: in.index, key: in.key})
		}
	}
	sort.Slice(all, func(i, j int) bool {
		a, b := all[i], all[j]
		if a.vm.Block != b.vm.Block {
			return a.vm.Block < b.vm.Block
		}
		if a.index != b.index {
			return a.index < b.index
		}
		return a.key < b.key
	})
	out := make([]*VM, len(all))
	for i, s := range all {
		out[i] = s.vm
	}
	return out
}

func (l *loader) decodeVMBlock(d *decl) *vmBlock {
	vb := &vmBlock{d: d, sc: scopeVM}
	c := d.content
	ca, fa := c.Attributes["count"], c.Attributes["for_each"]
	if ca != nil && fa != nil {
		later := fa
		if ca.Range.Start.Byte > fa.Range.Start.Byte {
			later = ca
		}
		l.errorf(later.NameRange, "Invalid combination of count and for_each", "A vm block may set count or for_each, not both.")
		return nil
	}
	if ca != nil {
		vb.sc |= allowCount
	}
	if fa != nil {
		vb.sc |= allowEach
	}
	nicSeen := map[string]hcl.Range{}
	sdSeen := map[string]hcl.Range{}
	diskSeen := map[string]hcl.Range{}
	secretSeen := map[string]hcl.Range{}
	for _, b := range c.Blocks {
		var schema *hcl.BodySchema
		switch b.Type {
		case "network":
			schema = nicSchema
		case "shared_dir":
			schema = sharedDirSchema
		case "disk":
			schema = diskSchema
		case "publish":
			schema = publishSchema
		case "ready":
			schema = readySchema
		case "health":
			schema = healthSchema
		case "cloud_init":
			schema = cloudInitSchema
		case "secret":
			schema = secretSchema
		}
		bc, diags := b.Body.Content(schema)
		l.addAll(diags)
		s := sub{block: b, c: bc}
		switch b.Type {
		case "network":
			name := b.Labels[0]
			if _, ok := l.networks[name]; !ok {
				l.errorf(b.LabelRanges[0], "Reference to undeclared network", "A network named %q is not declared.%s", name, didYouMean(name, l.netOrder))
				continue
			}
			if prev, dup := nicSeen[name]; dup {
				l.errorf(b.DefRange, "Network attached twice", "This vm is already attached to network %q at %s; a VM has at most one NIC per network.", name, prev)
				continue
			}
			nicSeen[name] = b.DefRange
			vb.nics = append(vb.nics, s)
		case "shared_dir", "disk", "secret":
			name := b.Labels[0]
			seen := map[string]map[string]hcl.Range{"shared_dir": sdSeen, "disk": diskSeen, "secret": secretSeen}[b.Type]
			if !IsDNSLabel(name) {
				l.errorf(b.LabelRanges[0], "Invalid "+b.Type+" name", "%q is not a valid %s name: names must be DNS labels (lower-case letters, digits and '-', 1 to 63 characters).", name, b.Type)
				continue
			}
			if prev, dup := seen[name]; dup {
				l.errorf(b.DefRange, "Duplicate "+b.Type+" block", "A %s named %q was already declared in this vm at %s.", b.Type, name, prev)
				continue
			}
			seen[name] = b.DefRange
			if b.Type == "disk" {
				_, hasVol := bc.Attributes["volume"]
				_, hasSize := bc.Attributes["size"]
				if hasVol == hasSize {
					what := "neither volume nor size"
					if hasVol {
						what = "both volume and size"
					}
					l.errorf(b.DefRange, "Invalid disk", "disk %q sets %s: set volume for a persistent volume or size for a scratch disk.", name, what)
					continue
				}
				vb.disks = append(vb.disks, s)
			} else if b.Type == "secret" {
				vb.secrets = append(vb.secrets, s)
			} else {
				vb.sharedDirs = append(vb.sharedDirs, s)
			}
		case "publish":
			vb.publish = append(vb.publish, s)
		case "ready", "health", "cloud_init":
			slot := &vb.ready
			switch b.Type {
			case "cloud_init":
				slot = &vb.cloudInit
			case "health":
				slot = &vb.health
			}
			if *slot != nil {
				l.errorf(b.DefRange, "Duplicate "+b.Type+" block", "A vm has at most one %s block; the first is at %s.", b.Type, (*slot).block.DefRange)
				continue
			}
			if b.Type == "ready" || b.Type == "health" {
				var probes []string
				for _, p := range []string{"tcp", "http", "exec"} {
					if _, ok := bc.Attributes[p]; ok {
						probes = append(probes, p)
					}
				}
				if len(probes) > 1 {
					l.errorf(b.DefRange, "More than one "+b.Type+" probe", "%s sets %s; set at most one of tcp, http and exec.", b.Type, strings.Join(probes, " and "))
					continue
				}
				if b.Type == "health" && len(probes) == 0 {
					l.errorf(b.DefRange, "Health check without a probe", "health needs one of tcp, http and exec.")
					continue
				}
			}
			*slot = &s
		}
	}
	return vb
}

// instances expands count and for_each.
func (l *loader) instances(vb *vmBlock) []instance {
	d := vb.d
	label := d.name
	c, ctx := d.content, d.file.ctx
	if ca := c.Attributes["count"]; ca != nil {
		n, ok := l.evalInt(ca, ctx, scopeVM, 0, MaxCount, "Invalid count")
		if !ok {
			return nil
		}
		if n > 0 && !IsDNSLabel(label+"-"+strconv.Itoa(n-1)) {
			l.errorf(ca.Expr.Range(), "Invalid count", "The instance name %q is longer than a DNS label allows (63 characters); shorten the vm label.", label+"-"+strconv.Itoa(n-1))
			return nil
		}
		out := make([]instance, n)
		for i := range out {
			ic := ctx.NewChild()
			ic.Variables = map[string]cty.Value{"count": cty.ObjectVal(map[string]cty.Value{"index": cty.NumberIntVal(int64(i))})}
			out[i] = instance{addr: fmt.Sprintf("vm.%s[%d]", label, i), name: label + "-" + strconv.Itoa(i), index: i, ctx: ic}
		}
		return out
	}
	if fa := c.Attributes["for_each"]; fa != nil {
		v, ok := l.eval(fa, ctx, cty.DynamicPseudoType, scopeVM)
		if !ok {
			if v != cty.NilVal {
				l.errorf(fa.Expr.Range(), "Invalid for_each argument", "for_each may not be null; use {} for no instances.")
			}
			return nil
		}
		ty := v.Type()
		isSet := ty.IsSetType()
		if isSet {
			sv, err := convert.Convert(v, cty.Set(cty.String))
			if err != nil {
				l.errorf(fa.Expr.Range(), "Invalid for_each argument", "for_each takes a map or a set of strings; this set's elements are not strings.")
				return nil
			}
			v = sv
		} else if !ty.IsMapType() && !ty.IsObjectType() {
			l.errorf(fa.Expr.Range(), "Invalid for_each argument", "for_each takes a map or a set of strings; got %s. Convert a list with toset().", ty.FriendlyName())
			return nil
		}
		if v.LengthInt() > MaxCount {
			l.errorf(fa.Expr.Range(), "Invalid for_each argument", "for_each has %d elements; at most %d are allowed.", v.LengthInt(), MaxCount)
			return nil
		}
		var out []instance
		var bad []string
		for it := v.ElementIterator(); it.Next(); {
			k, ev := it.Element()
			if k.IsNull() || !k.IsKnown() {
				l.errorf(fa.Expr.Range(), "Invalid for_each argument", "for_each may not contain null keys.")
				return nil
			}
			key := k.AsString()
			if isSet {
				ev = k
			}
			name := label + "-" + key
			if !IsDNSLabel(name) {
				bad = append(bad, strconv.Quote(key))
				continue
			}
			ic := ctx.NewChild()
			ic.Variables = map[string]cty.Value{"each": cty.ObjectVal(map[string]cty.Value{"key": k, "value": ev})}
			out = append(out, instance{addr: fmt.Sprintf("vm.%s[%q]", label, key), name: name, key: key, ctx: ic})
		}
		if len(bad) > 0 {
			l.errorf(fa.Expr.Range(), "Invalid for_each key", "The instance names %s-<key> must be DNS labels (lower-case letters, digits and '-', at most 63 characters); these keys do not make one: %s.", label, strings.Join(bad, ", "))
			return nil
		}
		return out
	}
	return []instance{{addr: "vm." + label, name: label, ctx: ctx}}
}

// evalHypervisor reads hypervisor: a VMM this build has no driver for is
// refused by name rather than silently run under QEMU.
func (l *loader) evalHypervisor(a *hcl.Attribute, ctx *hcl.EvalContext, sc scope) string {
	if a != nil {
		if s, ok := l.evalString(a, ctx, sc); ok && slices.Contains(knownHypervisors, s) {
			l.errorf(a.Expr.Range(), "Unsupported hypervisor", "hypervisor %q is not supported by this build (supported: %s).", s, strings.Join(validHypervisors, ", "))
			return "auto"
		}
	}
	return l.evalEnum(a, ctx, sc, validHypervisors, "auto")
}

// accelDefault is every VM's accel unless it sets its own: $STACK_ACCEL,
// else auto. A bad value is reported once.
func (l *loader) accelDefault() string {
	l.accelOnce.Do(func() {
		l.accel = AccelAuto
		v, ok := l.getenv(AccelEnv)
		if !ok || v == "" {
			return
		}
		if !slices.Contains(validAccels, v) {
			l.add(&hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid " + AccelEnv,
				Detail: fmt.Sprintf("The environment variable %s is %q; use one of %q, or unset it.", AccelEnv, v, validAccels)})
			return
		}
		l.accel = v
	})
	return l.accel
}

// DeriveMachineID is the machine ID of a VM that sets none: stable for a
// namespace and VM name, so that a re-created VM keeps it.
func DeriveMachineID(namespace, vm string) string {
	h := sha256.Sum256([]byte("stack machine-id\x00" + namespace + "\x00" + vm))
	return hex.EncodeToString(h[:16])
}

// templatesDefault is every VM's template unless it sets its own: false
// when $STACK_TEMPLATES is off (or 0, false, no), else true. Another value
// is reported once.
func (l *loader) templatesDefault() bool {
	l.templatesOnce.Do(func() {
		l.templates = true
		v, ok := l.getenv(TemplatesEnv)
		switch strings.ToLower(v) {
		case "", "on", "1", "true", "yes":
		case "off", "0", "false", "no":
			l.templates = false
		default:
			if ok {
				l.add(&hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid " + TemplatesEnv,
					Detail: fmt.Sprintf("The environment variable %s is %q; use off (or on), or unset it.", TemplatesEnv, v)})
			}
		}
	})
	return l.templates
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func (l *loader) buildVM(vb *vmBlock, in instance) *VM {
	d := vb.d
	c, ctx, sc := d.content, in.ctx, vb.sc
	vm := &VM{
		Address:    in.addr,
		Name:       in.name,
		Block:      d.name,
		CPUs:       DefaultCPUs,
		MemoryMB:   DefaultMemoryMB,
		Ready:      Ready{Timeout: DefaultReadyTimeout},
		Restart:    RestartNo,
		Hypervisor: "auto",
		Machine:    "auto",
		Accel:      l.accelDefault(),
		Template:   l.templatesDefault(),
		DependsOn:  slices.Clone(l.vmDepends[d.name]),
		DeclRange:  d.block.DefRange,
	}
	attr := c.Attributes
	if n, ok := l.evalInt(attr["cpus"], ctx, sc, 1, MaxCPUs, "cpus out of range"); ok {
		vm.CPUs = n
	}
	if n, ok := l.evalInt(attr["memory_mb"], ctx, sc, MinMemoryMB, MaxMemoryMB, "memory_mb out of range"); ok {
		vm.MemoryMB = n
	}
	vm.Kernel = l.evalPath(attr["kernel"], d.file, ctx, sc, false)
	vm.Initramfs = l.evalPath(attr["initramfs"], d.file, ctx, sc, false)
	vm.RootDisk = l.evalPath(attr["root_disk"], d.file, ctx, sc, false)
	if vm.RootDisk != "" && attr["kernel"] == nil {
		l.errorf(attr["root_disk"].NameRange, "root_disk requires a kernel", "Cloud-init mode boots the kernel given by kernel (and optionally initramfs) with root_disk as the root file system; set kernel.")
	}
	if s, ok := l.evalString(attr["cmdline"], ctx, sc); ok {
		// QEMU's -append takes one line: the driver refuses these too,
		// but only at boot.
		if strings.ContainsAny(s, "\n\x00") {
			l.errorf(attr["cmdline"].Expr.Range(), "Invalid cmdline", "The kernel command line may not contain a newline or NUL character; separate parameters with spaces.")
		}
		vm.Cmdline = s
	}
	if cmd, ok := l.evalStrings(attr["command"], ctx, sc); ok {
		vm.Command = cmd
	}
	l.loadImage(vm, attr, d.file, ctx, sc)
	if env, ok := l.evalStringMap(attr["env"], ctx, sc); ok {
		for _, k := range sortedKeys(env) {
			if !envName.MatchString(k) {
				l.errorf(attr["env"].Expr.Range(), "Invalid environment variable name", "%q is not a valid environment variable name: use letters, digits and '_', not starting with a digit.", k)
			}
		}
		vm.Env = env
	}
	if vm.RootDisk != "" {
		// The image's own init boots a cloud-init VM; stack's guest init,
		// which runs command with env, is not there to run them.
		for _, name := range []string{"command", "env"} {
			if a := attr[name]; a != nil {
				l.errorf(a.NameRange, name+" needs initramfs mode", "In cloud-init mode (root_disk) the image's own init boots the VM, and stack's guest init, which runs command with env, is not there; start the workload from cloud_init's user_data instead (runcmd, or a systemd unit in write_files).")
			}
		}
	}
	vm.Restart = l.evalEnum(attr["restart"], ctx, sc, validRestarts, RestartNo)
	vm.Hypervisor = l.evalHypervisor(attr["hypervisor"], ctx, sc)
	vm.Machine = l.evalEnum(attr["machine"], ctx, sc, validMachines, "auto")
	vm.Accel = l.evalEnum(attr["accel"], ctx, sc, validAccels, vm.Accel)
	vm.Template = l.evalBool(attr["template"], ctx, sc, vm.Template)
	if n, ok := l.evalInt(attr["pool"], ctx, sc, 0, MaxPool, "pool out of range"); ok && n > 0 {
		// A pool's VMs are restored from the template of their shape and
		// started before their VM exists, so the files of disks and shared
		// directories, which QEMU opens when it starts, cannot be theirs.
		switch {
		case vm.RootDisk != "":
			l.errorf(attr["pool"].NameRange, "Pool needs initramfs mode", "pool keeps VMs restored from a boot template, which cloud-init-mode VMs (root_disk) do not use.")
		case vm.Image != "":
			l.errorf(attr["pool"].NameRange, "Pool with an image", "pool keeps VMs started before the VM that takes one exists, and an image VM's writable root is a disk of its own, opened when its VMM starts; use a VM without image.")
		case len(vb.disks) > 0 || len(vb.sharedDirs) > 0 || len(vb.secrets) > 0:
			l.errorf(attr["pool"].NameRange, "Pool with disks or shared directories", "pool keeps VMs started before the VM that takes one exists, so they cannot have its disk, shared_dir or secret blocks (their files are opened when the VMM starts); use a VM without them.")
		case !vm.Template:
			l.errorf(attr["pool"].NameRange, "Pool without templates", "pool keeps VMs restored from a boot template; it cannot be used with template = false or STACK_TEMPLATES=off.")
		default:
			vm.Pool = n
		}
	}
	l.loadCPULimit(vm, attr["cpu_limit"], ctx, sc)
	vm.MachineID = DeriveMachineID(l.ns, vm.Name)
	if a := attr["machine_id"]; a != nil {
		if id, ok := l.evalString(a, ctx, sc); ok {
			if !guestproto.ValidMachineID(id) {
				l.errorf(a.Expr.Range(), "Invalid machine_id", "machine_id must be 32 lower-case hexadecimal digits, not all zero, as in %q; got %q.", vm.MachineID, id)
			} else {
				vm.MachineID = id
			}
		}
	}

	for _, s := range vb.nics {
		vm.NICs = append(vm.NICs, l.buildNIC(s, vm, ctx, sc))
	}
	for _, s := range vb.sharedDirs {
		sd := &SharedDir{Name: s.block.Labels[0]}
		sd.HostPath = l.evalPath(s.c.Attributes["host_path"], d.file, ctx, sc, true)
		if sd.HostPath != "" {
			// virtiofsd serves the path itself, not what a link names:
			// a link fails only at boot, behind QEMU's "Connection
			// refused".
			if fi, err := os.Lstat(sd.HostPath); err == nil && fi.Mode()&os.ModeSymlink != 0 {
				target, _ := filepath.EvalSymlinks(sd.HostPath)
				l.errorf(s.c.Attributes["host_path"].Expr.Range(), "Invalid host_path", "%s is a symbolic link (to %s); a shared directory is served as it is, without following links. Give the directory it points to.", sd.HostPath, target)
			}
		}
		if sys := l.systemDir(sd.HostPath); sys != "" {
			rng := s.c.Attributes["host_path"].Expr.Range()
			l.add(&hcl.Diagnostic{Severity: hcl.DiagWarning, Summary: "Shared directory exposes a system directory",
				Detail: fmt.Sprintf("%s is, holds or lies inside %s: the guest sees (and, unless read_only, can change) what the host keeps there. Share a directory made for the guest instead.", sd.HostPath, sys), Subject: &rng})
		}
		sd.GuestPath = l.evalGuestPath(s.c.Attributes["guest_path"], ctx, sc)
		sd.ReadOnly = l.evalBool(s.c.Attributes["read_only"], ctx, sc, false)
		vm.SharedDirs = append(vm.SharedDirs, sd)
	}
	for _, s := range vb.disks {
		dk := &Disk{Name: s.block.Labels[0]}
		if a := s.c.Attributes["volume"]; a != nil {
			if name, ok := l.evalString(a, ctx, sc); ok {
				if _, declared := l.volumes[name]; !declared {
					l.errorf(a.Expr.Range(), "Reference to undeclared volume", "A volume named %q is not declared.%s", name, didYouMean(name, l.volOrder))
				} else if prev, used := l.volOwner[name]; used {
					l.errorf(a.Expr.Range(), "Volume attached to more than one VM", "Volume %q is already attached to %s; a volume can be attached to one VM instance only. Use a scratch disk (size) for per-instance storage.", name, prev)
				} else {
					l.volOwner[name] = vm.Address
				}
				dk.Volume = name
			}
		} else if a := s.c.Attributes["size"]; a != nil {
			if n, ok := l.evalSize(a, ctx, sc, minDiskSize); ok {
				dk.SizeBytes = n
			}
		}
		if a := s.c.Attributes["guest_path"]; a != nil {
			dk.GuestPath = l.evalGuestPath(a, ctx, sc)
			// A raw volume has no file system to mount.
			if v := l.volModels[dk.Volume]; v != nil && v.Format == "raw" {
				l.errorf(a.NameRange, "guest_path on a raw volume", "Volume %q has format \"raw\": a block device without a file system, which cannot be mounted. Drop guest_path (the guest finds the device as /dev/disk/by-id/virtio-<serial>) or use format \"ext4\".", dk.Volume)
			}
		}
		vm.Disks = append(vm.Disks, dk)
	}
	for _, s := range vb.publish {
		p := &Publish{Protocol: l.evalEnum(s.c.Attributes["protocol"], ctx, sc, validProtocols, "tcp")}
		if a := s.c.Attributes["guest_port"]; a != nil {
			p.GuestPort, _ = l.evalInt(a, ctx, sc, 1, 65535, "Port out of range")
		}
		if a := s.c.Attributes["host_port"]; a != nil {
			if n, ok := l.evalInt(a, ctx, sc, 1, 65535, "Port out of range"); ok {
				p.HostPort = n
				k := portKey{p.Protocol, n}
				if prev, used := l.portOwner[k]; used {
					l.errorf(a.Expr.Range(), "Host port published twice", "Host port %d/%s is already published by %s.", n, p.Protocol, prev)
				} else {
					l.portOwner[k] = vm.Address
				}
			}
		}
		if a := s.c.Attributes["host_ip"]; a != nil {
			if str, ok := l.evalString(a, ctx, sc); ok {
				ip, err := netip.ParseAddr(str)
				switch {
				case err != nil || ip.Zone() != "":
					l.errorf(a.Expr.Range(), "Invalid host_ip", "host_ip must be an IP address of this host, as in \"127.0.0.1\" (the default), \"0.0.0.0\" (every IPv4 address) or \"::\" (every address); got %q.", str)
				case ip != netip.AddrFrom4([4]byte{127, 0, 0, 1}):
					p.HostIP = ip
				}
			}
		}
		vm.Publish = append(vm.Publish, p)
	}
	if s := vb.ready; s != nil {
		ra := s.c.Attributes
		vm.Ready.TCP, vm.Ready.HTTP, vm.Ready.Exec = l.evalProbe(ra, ctx, sc)
		if d, ok := l.evalDuration(ra["timeout"], ctx, sc); ok {
			vm.Ready.Timeout = d
		}
	}
	if s := vb.health; s != nil {
		ha := s.c.Attributes
		h := &Health{Interval: 30 * time.Second, Timeout: 30 * time.Second, Retries: 3}
		h.TCP, h.HTTP, h.Exec = l.evalProbe(ha, ctx, sc)
		for _, f := range []struct {
			name string
			dst  *time.Duration
		}{{"interval", &h.Interval}, {"timeout", &h.Timeout}, {"start_period", &h.StartPeriod}} {
			if d, ok := l.evalDuration(ha[f.name], ctx, sc); ok {
				*f.dst = d
			}
		}
		if n, ok := l.evalInt(ha["retries"], ctx, sc, 1, 1000, "Retries out of range"); ok {
			h.Retries = n
		}
		vm.Health = h
	}
	if s := vb.cloudInit; s != nil {
		ci := &CloudInit{}
		if a := s.c.Attributes["user_data"]; a != nil {
			if ud, ok := l.evalString(a, ctx, sc); ok {
				ci.UserData = ud
				ci.UserDataRange = a.Expr.Range()
				l.checkUserData(a, ud, vm.Name)
			}
		}
		if keys, ok := l.evalStrings(s.c.Attributes["ssh_authorized_keys"], ctx, sc); ok {
			ci.SSHAuthorizedKeys = keys
		}
		ci.Strict = l.evalBool(s.c.Attributes["strict"], ctx, sc, false)
		if attr["root_disk"] == nil {
			l.errorf(s.block.DefRange, "cloud_init requires root_disk", "cloud_init configures a cloud image booted from root_disk; initramfs-mode VMs take command and env instead.")
		}
		vm.CloudInit = ci
	}
	l.loadSecrets(vm, vb, ctx)
	vm.Sensitive = l.vmSensitive(vb)
	if len(vm.Secrets) > 0 {
		vm.Sensitive = append(vm.Sensitive, "secret")
		sort.Strings(vm.Sensitive)
	}
	return vm
}

// loadImage reads image and entrypoint. The reference is checked for its
// form here; what it names is resolved by the engine.
func (l *loader) loadImage(vm *VM, attr hcl.Attributes, f *file, ctx *hcl.EvalContext, sc scope) {
	if ep, ok := l.evalStrings(attr["entrypoint"], ctx, sc); ok {
		vm.Entrypoint = ep
	}
	a := attr["image"]
	if a == nil {
		if e := attr["entrypoint"]; e != nil {
			l.errorf(e.NameRange, "entrypoint needs image", "entrypoint replaces an OCI image's entrypoint; without image, command is the whole workload.")
		}
		return
	}
	ref, ok := l.evalString(a, ctx, sc)
	if !ok {
		return
	}
	r, err := image.ParseRef(ref)
	if err != nil {
		l.errorf(a.Expr.Range(), "Invalid image reference", "%v. Use NAME[:TAG|@DIGEST] for a registry, oci:PATH[:TAG] for an OCI layout, or docker-archive:PATH.", err)
		return
	}
	if r.Path != "" && !filepath.IsAbs(r.Path) {
		// A layout or archive path is relative to the file, as every
		// path in a stack file is.
		r.Path = resolvePath(f.dir, r.Path)
		ref = r.String()
	}
	if r := attr["root_disk"]; r != nil {
		l.errorf(r.NameRange, "image and root_disk together", "A VM boots either an OCI image (image) or a cloud image (root_disk), not both.")
		return
	}
	vm.Image = ref
}

func (l *loader) buildNIC(s sub, vm *VM, ctx *hcl.EvalContext, sc scope) *NIC {
	name := s.block.Labels[0]
	n := &NIC{Network: name, DeclRange: s.block.DefRange}
	nw := l.netModels[name] // nil when the network itself is invalid
	if a := s.c.Attributes["ip"]; a != nil {
		if str, ok := l.evalString(a, ctx, sc); ok {
			ip, err := netip.ParseAddr(str)
			rng := a.Expr.Range()
			switch {
			case err != nil || !ip.Is4():
				l.errorf(rng, "Invalid IP address", "ip must be an IPv4 address such as \"10.42.0.10\"; got %q.", str)
			case nw == nil:
			case !nw.Subnet.Contains(ip):
				l.errorf(rng, "IP address outside subnet", "%s is not in network %q's subnet %s.", ip, name, nw.Subnet)
			case ip == nw.Subnet.Addr():
				l.errorf(rng, "IP address is the network address", "%s is the network address of %s; pick a host address.", ip, nw.Subnet)
			case ip == lastAddr(nw.Subnet):
				l.errorf(rng, "IP address is the broadcast address", "%s is the broadcast address of %s; pick a host address.", ip, nw.Subnet)
			case ip == nw.Gateway:
				l.errorf(rng, "IP address is the gateway address", "%s is network %q's gateway.", ip, name)
			default:
				k := ipKey{name, ip}
				if prev, used := l.ipOwner[k]; used {
					l.errorf(rng, "IP address used twice", "%s is already assigned to %s on network %q.", ip, prev, name)
				} else {
					l.ipOwner[k] = vm.Address
					n.IP = ip
				}
			}
		}
	}
	if a := s.c.Attributes["mac"]; a != nil {
		if str, ok := l.evalString(a, ctx, sc); ok {
			mac, err := netaddr.ParseMAC(str)
			rng := a.Expr.Range()
			switch {
			case err != nil:
				l.errorf(rng, "Invalid MAC address", "mac must be six hex bytes separated by ':', as in \"52:54:00:12:34:56\"; got %q.", str)
			case mac.IsMulticast():
				l.errorf(rng, "Multicast MAC address", "%s is a multicast address (the lowest bit of the first byte is set); a NIC needs a unicast address such as 52:54:00:...", str)
			default:
				if prev, used := l.macOwner[mac]; used {
					l.errorf(rng, "MAC address used twice", "%s is already used by %s.", mac, prev)
				} else {
					l.macOwner[mac] = vm.Address + " network " + name
					n.MAC = mac
				}
			}
		}
	}
	return n
}

// evalPath evaluates a host path relative to the file's directory and
// checks that it exists (a directory when dir, else a regular file).
func (l *loader) evalPath(a *hcl.Attribute, f *file, ctx *hcl.EvalContext, sc scope, dir bool) string {
	if a == nil {
		return ""
	}
	s, ok := l.evalString(a, ctx, sc)
	if !ok {
		return ""
	}
	if s == "" {
		l.errorf(a.Expr.Range(), "Invalid "+a.Name, "%s may not be empty.", a.Name)
		return ""
	}
	p := resolvePath(f.dir, s)
	r, cached := l.statCache[p]
	if !cached {
		fi, err := os.Stat(p)
		if err == nil {
			r.isDir = fi.IsDir()
		}
		r.err = err
		l.statCache[p] = r
	}
	kind := "file"
	if dir {
		kind = "directory"
	}
	switch {
	case r.err != nil:
		l.errorf(a.Expr.Range(), "Missing "+a.Name+" "+kind, "stat %s: %s.", p, pathErr(r.err))
		return ""
	case r.isDir != dir:
		l.errorf(a.Expr.Range(), "Invalid "+a.Name, "%s is not a %s.", p, kind)
		return ""
	}
	return p
}

func pathErr(err error) string {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err.Error()
	}
	return err.Error()
}

func (l *loader) evalGuestPath(a *hcl.Attribute, ctx *hcl.EvalContext, sc scope) string {
	if a == nil {
		return ""
	}
	s, ok := l.evalString(a, ctx, sc)
	if !ok {
		return ""
	}
	if !path.IsAbs(s) || path.Clean(s) == "/" {
		l.errorf(a.Expr.Range(), "Invalid guest_path", "guest_path must be an absolute path other than /, as in \"/data\"; got %q.", s)
		return ""
	}
	return path.Clean(s)
}

// parseDependsOn reads depends_on as references, without evaluating them.
func (l *loader) parseDependsOn(d *decl) {
	a := d.content.Attributes["depends_on"]
	if a == nil {
		return
	}
	l.dependsRng[d.name] = a.Expr.Range()
	exprs, diags := hcl.ExprList(a.Expr)
	l.addAll(diags)
	seen := map[string]bool{}
	var deps []string
	for _, e := range exprs {
		tr, ds := hcl.AbsTraversalForExpr(e)
		var name string
		if !ds.HasErrors() && len(tr) == 2 && tr.RootName() == "vm" {
			if at, ok := tr[1].(hcl.TraverseAttr); ok {
				name = at.Name
			}
		}
		if name == "" {
			l.errorf(e.Range(), "Invalid depends_on reference", "depends_on takes a list of whole vm blocks, as in [vm.db].")
			continue
		}
		if _, ok := l.vms[name]; !ok {
			l.errorf(e.Range(), "Reference to undeclared vm", "A vm named %q is not declared.%s", name, didYouMean(name, l.vmOrder))
			continue
		}
		if !seen[name] {
			seen[name] = true
			deps = append(deps, name)
		}
	}
	sort.Strings(deps)
	l.vmDepends[d.name] = nil
	for _, dep := range deps {
		l.vmDepends[d.name] = append(l.vmDepends[d.name], "vm."+dep)
	}
}

// checkCycles reports each depends_on cycle once, named from its
// alphabetically first vm and pointing at that vm's depends_on.
func (l *loader) checkCycles() {
	state := map[string]int{}
	var stack []string
	var visit func(n string)
	visit = func(n string) {
		state[n] = 1
		stack = append(stack, n)
		for _, dep := range l.vmDepends[n] {
			m := strings.TrimPrefix(dep, "vm.")
			switch state[m] {
			case 0:
				visit(m)
			case 1:
				i := len(stack) - 1
				for stack[i] != m {
					i--
				}
				cyc := append([]string(nil), stack[i:]...)
				first := 0
				for j := range cyc {
					if cyc[j] < cyc[first] {
						first = j
					}
				}
				cyc = append(cyc[first:], cyc[:first]...)
				names := make([]string, 0, len(cyc)+1)
				for _, c := range append(cyc, cyc[0]) {
					names = append(names, "vm."+c)
				}
				l.errorf(l.dependsRng[cyc[0]], "Dependency cycle", "The vm blocks depend on each other in a cycle: %s.", strings.Join(names, " -> "))
			}
		}
		stack = stack[:len(stack)-1]
		state[n] = 2
	}
	for _, n := range sortedKeys(l.vms) {
		if state[n] == 0 {
			visit(n)
		}
	}
}

// systemDirs are host directories that no guest should see: the root, and
// what holds the host's configuration, secrets, programs and kernel.
var systemDirs = []string{"/etc", "/root", "/boot", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/var", "/proc", "/sys", "/dev", "/run"}

// systemDir names the system directory (or the directory of stack's own,
// Options.Private) that sharing host exposes, or "". host is absolute and
// clean. The root exposes everything; a system directory exposes itself
// and what lies inside it; one of stack's own is exposed by its ancestors
// too, since its sockets and state live below.
func (l *loader) systemDir(host string) string {
	if host == "" {
		return ""
	}
	if host == "/" {
		return "/"
	}
	for _, d := range systemDirs {
		if within(host, d) {
			return d
		}
	}
	for _, d := range l.opts.Private {
		if d = filepath.Clean(d); within(host, d) || within(d, host) {
			return d
		}
	}
	return ""
}

// within reports whether path is dir or lies inside it.
func within(path, dir string) bool {
	return path == dir || strings.HasPrefix(path, dir+"/")
}

// evalProbe reads the probe attributes of a ready or health block: tcp,
// http and exec (the caller checked that at most one is set).
func (l *loader) evalProbe(ra hcl.Attributes, ctx *hcl.EvalContext, sc scope) (tcp int, httpURL string, exec []string) {
	if n, ok := l.evalInt(ra["tcp"], ctx, sc, 1, 65535, "Port out of range"); ok {
		tcp = n
	}
	if a := ra["http"]; a != nil {
		if u, ok := l.evalString(a, ctx, sc); ok {
			pu, err := url.Parse(u)
			if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
				l.errorf(a.Expr.Range(), "Invalid http probe", "http must be an http:// or https:// URL, as in \"http://localhost:80/health\"; got %q.", u)
			} else {
				httpURL = u
			}
		}
	}
	if a := ra["exec"]; a != nil {
		if argv, ok := l.evalStrings(a, ctx, sc); ok {
			if len(argv) == 0 || argv[0] == "" {
				l.errorf(a.Expr.Range(), "Invalid exec probe", "exec must be a non-empty command list, as in [\"pg_isready\"].")
			} else {
				exec = argv
			}
		}
	}
	return tcp, httpURL, exec
}

// evalDuration reads a duration attribute ("30s"); a nil attribute is not
// set.
func (l *loader) evalDuration(a *hcl.Attribute, ctx *hcl.EvalContext, sc scope) (time.Duration, bool) {
	if a == nil {
		return 0, false
	}
	s, ok := l.evalString(a, ctx, sc)
	if !ok {
		return 0, false
	}
	d, err := ParseDuration(s)
	if err != nil {
		l.errorf(a.Expr.Range(), "Invalid duration", "%s.", err)
		return 0, false
	}
	return d, true
}
