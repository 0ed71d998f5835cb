package export

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/stackvm/stack/cloudinit"
	"github.com/stackvm/stack/guestproto"
	"github.com/stackvm/stack/stackfile"
)

// NomadOptions tune a Nomad export. stack cannot upload disks, kernels or
// seeds: the flags say where the Nomad clients download them from.
type NomadOptions struct {
	// Datacenters the job runs in (default: all, "*").
	Datacenters []string
	// DiskURL is where a cloud-init VM's root disk is downloaded from
	// (go-getter source). "" names a placeholder, with a warning.
	DiskURL string
	// KernelURL is a directory URL with the kernel ("vmlinuz") and the
	// initramfs ("initramfs") of directly booted VMs. "" names a
	// placeholder, with a warning.
	KernelURL string
	// SeedURL is a directory URL serving the seed ISOs the export writes
	// (Result.Seeds' file names). "" names a placeholder, with a warning.
	SeedURL string
}

// The subset of Nomad's job API (github.com/hashicorp/nomad/api) that
// exports use; its JSON names are the Go field names. The tests decode the
// job strictly into api.Job.
type nomadJobFile struct {
	Job nomadJob
}

type nomadJob struct {
	ID          string
	Name        string
	Type        string
	Datacenters []string
	Meta        map[string]string `json:",omitempty"`
	TaskGroups  []nomadGroup
}

type nomadGroup struct {
	Name          string
	Count         int
	Meta          map[string]string `json:",omitempty"`
	Networks      []nomadNetwork    `json:",omitempty"`
	RestartPolicy nomadRestart
	Tasks         []nomadTask
}

type nomadNetwork struct {
	ReservedPorts []nomadPort
}

type nomadPort struct {
	Label string
	Value int
	To    int
}

type nomadRestart struct {
	Attempts int
	Interval time.Duration
	Delay    time.Duration
	Mode     string
}

type nomadTask struct {
	Name      string
	Driver    string
	Config    map[string]any
	Resources nomadResources
	Artifacts []nomadArtifact `json:",omitempty"`
	Templates []nomadTemplate `json:",omitempty"`
}

type nomadResources struct {
	Cores    int
	MemoryMB int
}

type nomadArtifact struct {
	GetterSource string
	RelativeDest string
	GetterMode   string
}

type nomadTemplate struct {
	EmbeddedTmpl string
	DestPath     string
	// Delimiters no config holds: the guest config is data, not a template.
	LeftDelim, RightDelim string
	ChangeMode            string
}

const (
	placeholderURL   = "https://stack.invalid/"
	templateDelimL   = "[[stack-none["
	templateDelimR   = "]stack-none]]"
	nomadConfigImage = "local/stack-config.img"
)

// Nomad exports in as one Nomad job (JSON, as `nomad job run -json` reads
// it) named after the namespace, with a group per VM instance running a
// qemu task. Result.Seeds are the NoCloud seed ISOs to serve at SeedURL.
func Nomad(in Input, opts NomadOptions) (*Result, error) {
	if len(opts.Datacenters) == 0 {
		opts.Datacenters = []string{"*"}
	}
	r := &Result{Seeds: map[string]*cloudinit.Seed{}}
	g := in.guest()
	url := func(base, file, what string) string {
		if base == "" {
			r.warn("export", "no %s: artifacts name the placeholder %s", what, placeholderURL)
			base = placeholderURL
		}
		return strings.TrimSuffix(base, "/") + "/" + file
	}
	job := nomadJob{ID: in.Stack.Namespace, Name: in.Stack.Namespace, Type: "service", Datacenters: opts.Datacenters,
		Meta: map[string]string{"stack.namespace": in.Stack.Namespace}}
	if len(in.Stack.Networks) > 0 {
		r.warn("export", "networks: Nomad's qemu driver gives each VM user-mode networking; the VMs share no L2 segment, so the stack addresses in their configs do not reach each other")
	}
	for _, v := range in.Stack.Volumes {
		r.warn(v.Address(), "volumes are not exported to Nomad (use a host volume and a -drive argument)")
	}
	for _, vm := range in.Stack.VMs {
		task := nomadTask{Name: vm.Name, Driver: "qemu", Resources: nomadResources{Cores: vm.CPUs, MemoryMB: vm.MemoryMB}}
		var args []string
		cfg := map[string]any{"accelerator": "kvm", "graceful_shutdown": true}
		kernel := func(cmdline string) {
			task.Artifacts = append(task.Artifacts,
				nomadArtifact{GetterSource: url(opts.KernelURL, "vmlinuz", "--kernel-url"), RelativeDest: "local/vmlinuz", GetterMode: "file"},
				nomadArtifact{GetterSource: url(opts.KernelURL, "initramfs", "--kernel-url"), RelativeDest: "local/initramfs", GetterMode: "file"})
			args = append(args, "-kernel", "local/vmlinuz", "-initrd", "local/initramfs", "-append", cmdline)
		}
		if vm.Mode() == stackfile.ModeCloudInit {
			seed, err := cloudinit.Build(g.SeedInput(vm))
			if err != nil {
				return nil, fmt.Errorf("export %s: build seed: %w", vm.Address, err)
			}
			file := vm.Name + "-seed.iso"
			r.Seeds[file] = seed
			task.Artifacts = append(task.Artifacts,
				nomadArtifact{GetterSource: url(opts.DiskURL, "root.img", "--disk-url"), RelativeDest: "local/root.img", GetterMode: "file"},
				nomadArtifact{GetterSource: url(opts.SeedURL, file, "--seed-url"), RelativeDest: "local/seed.iso", GetterMode: "file"})
			cfg["image_path"] = "local/root.img"
			args = append(args, "-drive", "file=local/seed.iso,format=raw,if=virtio,readonly=on")
			if vm.Kernel != "" {
				kernel(strings.TrimSpace("console=ttyS0 root=/dev/vda rw " + vm.Cmdline + " systemd.machine_id=" + vm.MachineID))
			}
		} else {
			raw, err := json.Marshal(g.Config(vm, vm.Command, vm.Env, nil, false))
			if err != nil {
				return nil, fmt.Errorf("export %s: encode guest config: %w", vm.Address, err)
			}
			// The guest init reads the config disk's JSON up to the first
			// NUL and trims white space: padding with spaces to whole
			// sectors keeps it a valid disk image written as text.
			padded := string(raw) + strings.Repeat(" ", (512-len(raw)%512)%512)
			task.Templates = append(task.Templates, nomadTemplate{EmbeddedTmpl: padded, DestPath: nomadConfigImage,
				LeftDelim: templateDelimL, RightDelim: templateDelimR, ChangeMode: "noop"})
			// image_path is the config disk too, but the driver gives it no
			// serial; the guest init finds the second drive by its serial.
			cfg["image_path"] = nomadConfigImage
			args = append(args, "-drive", "if=none,id=stackcfg,file="+nomadConfigImage+",format=raw,readonly=on,file.locking=off",
				"-device", "virtio-blk-pci,drive=stackcfg,serial="+guestproto.ConfigDiskSerial)
			kernel(strings.TrimSpace("console=ttyS0 quiet panic=-1 " + vm.Cmdline))
			if vm.Image != "" {
				r.warn(vm.Address, "image: image VMs are not exported yet; the VM runs its command without the image")
			}
		}
		cfg["args"] = args
		task.Config = cfg
		group := nomadGroup{Name: vm.Name, Count: 1, Meta: map[string]string{"stack.address": vm.Address},
			RestartPolicy: nomadRestartPolicy(vm.Restart), Tasks: []nomadTask{task}}
		if len(vm.Publish) > 0 {
			ports := map[string]int{}
			var n nomadNetwork
			for _, p := range vm.Publish {
				label := strings.ReplaceAll(portName(p), "-", "_")
				n.ReservedPorts = append(n.ReservedPorts, nomadPort{Label: label, Value: p.HostPort, To: p.GuestPort})
				ports[label] = p.GuestPort
				if p.Protocol == "udp" {
					r.warn(vm.Address, "publish %d/udp: the qemu driver forwards tcp only", p.HostPort)
				}
			}
			group.Networks = []nomadNetwork{n}
			cfg["port_map"] = []map[string]int{ports}
		}
		if len(vm.DependsOn) > 0 {
			group.Meta["stack.depends_on"] = strings.Join(vm.DependsOn, ",")
			r.warn(vm.Address, "depends_on %s: Nomad starts groups at once; kept as the stack.depends_on meta", strings.Join(vm.DependsOn, ", "))
		}
		if vm.Ready.TCP != 0 || vm.Ready.HTTP != "" || len(vm.Ready.Exec) > 0 {
			r.warn(vm.Address, "ready: Nomad checks belong to a service registration; the probe is not exported")
		}
		for _, d := range vm.Disks {
			r.warn(vm.Address, "disk %s: disks are not exported to Nomad", d.Name)
		}
		for _, sd := range vm.SharedDirs {
			r.warn(vm.Address, "shared_dir %s (%s in the guest): a host directory is not on the Nomad clients; dropped", sd.Name, sd.GuestPath)
		}
		if vm.Pool > 0 {
			r.warn(vm.Address, "pool: warm pools are not exported; dropped")
		}
		job.TaskGroups = append(job.TaskGroups, group)
	}
	r.Warnings = dedupe(r.Warnings)
	data, err := json.MarshalIndent(nomadJobFile{Job: job}, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode nomad job: %w", err)
	}
	r.Objects = append(r.Objects, Object{File: in.Stack.Namespace + ".nomad.json", Data: append(data, '\n')})
	return r, nil
}

// nomadRestartPolicy maps restart: always and on-failure restart in place
// (Nomad restarts a task whatever its exit code); no fails the group.
func nomadRestartPolicy(restart string) nomadRestart {
	if restart == stackfile.RestartNo {
		return nomadRestart{Attempts: 0, Interval: 30 * time.Minute, Delay: 15 * time.Second, Mode: "fail"}
	}
	return nomadRestart{Attempts: 10, Interval: 30 * time.Minute, Delay: 1 * time.Second, Mode: "delay"}
}

func dedupe(ws []Warning) []Warning {
	seen := map[Warning]bool{}
	var out []Warning
	for _, w := range ws {
		if !seen[w] {
			seen[w] = true
			out = append(out, w)
		}
	}
	return out
}
