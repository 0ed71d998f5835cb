package stackfile

import (
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"sort"

	"github.com/hashicorp/hcl/v2"
)

// Sensitive values. A variable declared `sensitive = true` has its value
// marked (a cty mark), and HCL carries the mark into every value computed
// from it: locals, string templates, function results. The loader records
// which attributes came out marked; a VM lists the attributes of the
// planner's (env, command, ...) that hold such a value in VM.Sensitive, and
// everything after the loader shows them as "(sensitive value)" and stores
// them only as salted hashes (state.Seal). HCL's diagnostic writer already
// leaves marked values out of its "with var.x as ..." lines.
//
// Sensitive values may only be used where they reach the guest and nowhere
// else: an address, a size or a count derived from a secret would show in
// every plan, name and file.

// sensitiveMark is the cty mark of a value derived from a sensitive
// variable.
type markKind string

const sensitiveMark markKind = "sensitive"

// vmSensitive allows the attributes of a VM that may hold sensitive values
// and returns the planner attributes that hold one. The kernel's command
// line is not one of them: the kernel prints it on the console, and the
// host's process list shows it.
func (l *loader) vmSensitive(vb *vmBlock) []string {
	attr := vb.d.content.Attributes
	by := map[string][]*hcl.Attribute{
		"command":    {attr["command"]},
		"entrypoint": {attr["entrypoint"]},
		"env":        {attr["env"]},
	}
	if s := vb.ready; s != nil {
		// Not http: the supervisor's readiness messages name the URL.
		by["ready"] = []*hcl.Attribute{s.c.Attributes["exec"]}
	}
	if s := vb.cloudInit; s != nil {
		by["cloud_init"] = []*hcl.Attribute{s.c.Attributes["user_data"], s.c.Attributes["ssh_authorized_keys"]}
	}
	var out []string
	for _, name := range sortedKeys(by) {
		hit := false
		for _, a := range by[name] {
			if a == nil {
				continue
			}
			l.sensitiveOK[a] = true
			hit = hit || l.sensitive[a]
		}
		if hit {
			out = append(out, name)
		}
	}
	return out
}

// checkSensitive reports every attribute that holds a sensitive value where
// it would be shown or recorded in clear.
func (l *loader) checkSensitive() {
	var bad []*hcl.Attribute
	for a := range l.sensitive {
		if !l.sensitiveOK[a] {
			bad = append(bad, a)
		}
	}
	sort.Slice(bad, func(i, j int) bool {
		ri, rj := bad[i].Range, bad[j].Range
		if ri.Filename != rj.Filename {
			return ri.Filename < rj.Filename
		}
		return ri.Start.Byte < rj.Start.Byte
	})
	for _, a := range bad {
		l.errorf(a.Expr.Range(), "Sensitive value not allowed here",
			"The value of %q is derived from a sensitive variable. Sensitive values may be used in a VM's env, command, entrypoint, ready's exec, cloud_init's user_data and ssh_authorized_keys, in locals and in validation conditions: anywhere else they would be shown in plans and names, or recorded in clear.", a.Name)
	}
}

// IsSensitive reports whether the VM attribute name (as the planner names
// it) holds a value derived from a sensitive variable.
func (vm *VM) IsSensitive(name string) bool { return slices.Contains(vm.Sensitive, name) }

// WithoutSensitive returns a copy of vm whose sensitive attributes are
// cleared, for a saved plan: RestoreSensitive puts them back from the files.
func (vm *VM) WithoutSensitive() *VM {
	c := *vm
	// What is not secret in ready stays: only its exec can be.
	c.RestoreSensitive(&VM{Ready: Ready{TCP: vm.Ready.TCP, HTTP: vm.Ready.HTTP, Timeout: vm.Ready.Timeout}, CloudInit: &CloudInit{}})
	return &c
}

// RestoreSensitive sets vm's sensitive attributes from from, the same VM
// loaded again from the files.
func (vm *VM) RestoreSensitive(from *VM) {
	for _, name := range vm.Sensitive {
		switch name {
		case "command":
			vm.Command = from.Command
		case "entrypoint":
			vm.Entrypoint = from.Entrypoint
		case "env":
			vm.Env = from.Env
		case "ready":
			vm.Ready = from.Ready
		case "cloud_init":
			vm.CloudInit = from.CloudInit
		case "secret":
			vm.Secrets = from.Secrets
		}
	}
}

// loadSecrets reads a VM's secret blocks: each file must be a regular file
// no larger than file() reads, and only its digest is kept in the model.
func (l *loader) loadSecrets(vm *VM, vb *vmBlock, ctx *hcl.EvalContext) {
	for _, s := range vb.secrets {
		if vm.RootDisk != "" {
			l.errorf(s.block.DefRange, "secret needs initramfs mode", "secret files are given to the guest by the built-in guest init; a cloud-init VM (root_disk) can take them through cloud_init's user_data or a shared_dir.")
			return
		}
		a := s.c.Attributes["file"]
		path := l.evalPath(a, vb.d.file, ctx, vb.sc, false)
		if path == "" {
			continue
		}
		data, err := readSmallFile(path)
		if err != nil {
			l.errorf(a.Expr.Range(), "Cannot read secret file", "read %s: %s.", path, err)
			continue
		}
		sum := sha256.Sum256(data)
		vm.Secrets = append(vm.Secrets, &Secret{Name: s.block.Labels[0], HostPath: path, Digest: hex.EncodeToString(sum[:])})
	}
}
