package export

import (
	"encoding/json"
	"fmt"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/stackvm/stack/cloudinit"
	"github.com/stackvm/stack/engine"
	"github.com/stackvm/stack/guestproto"
	"github.com/stackvm/stack/hypervisor/qemu"
	"github.com/stackvm/stack/stackfile"
)

// Root disk kinds of cloud-init-mode VMs (KubeVirtOptions.RootDisk).
const (
	RootContainerDisk = "containerdisk"
	RootDataVolume    = "datavolume"
)

// Paths of the kernel and initramfs in a kernel image (the container that
// KubeVirt's kernelBoot copies them from).
const (
	KernelPath    = "/boot/vmlinuz"
	InitramfsPath = "/boot/initramfs"
)

// Labels and annotations stack puts on what it exports.
const (
	LabelNamespace      = "stack.dev/namespace"
	LabelVM             = "stack.dev/vm"
	AnnotationAddress   = "stack.dev/address"
	AnnotationDependsOn = "stack.dev/depends-on"
)

// KubeVirtOptions tune a KubeVirt export. stack cannot upload disks or
// kernels: the flags name the images that hold them.
type KubeVirtOptions struct {
	// RootDisk is how a cloud-init VM's root disk is given: a
	// containerDisk (ephemeral, the default) or a DataVolume that CDI
	// imports once into a PVC (persistent).
	RootDisk string
	// DiskImage is the container image holding the root disk (a
	// containerDisk image; a DataVolume imports it from the registry).
	// "" names a placeholder, with a warning.
	DiskImage string
	// DiskSize is the DataVolume's size (default 10Gi).
	DiskSize string
	// KernelImage is the container image with the kernel at KernelPath and
	// the initramfs at InitramfsPath, for VMs that boot a kernel directly.
	// "" names a placeholder, with a warning.
	KernelImage string
	// ConfigImage, when set, is the repository of the initramfs VMs'
	// config disk images (containerDisks tagged with each VM's name, which
	// WriteConfigImages writes): the guest init reads a raw disk, which a
	// ConfigMap, given to the VM as an ISO 9660 disk, is not. "" puts the
	// config in a ConfigMap, with a warning.
	ConfigImage string
}

const (
	placeholderDisk   = "stack.invalid/root-disk:latest"
	placeholderKernel = "stack.invalid/kernel:latest"
)

// KubeVirt exports in as KubeVirt manifests: a NetworkAttachmentDefinition
// per network, a PersistentVolumeClaim per volume, a VirtualMachine per VM
// instance (with its seed or guest config in a Secret or ConfigMap) and a
// Service per VM that publishes ports.
func KubeVirt(in Input, opts KubeVirtOptions) (*Result, error) {
	switch opts.RootDisk {
	case "":
		opts.RootDisk = RootContainerDisk
	case RootContainerDisk, RootDataVolume:
	default:
		return nil, fmt.Errorf("export kubevirt: root disk %q: want %s or %s", opts.RootDisk, RootContainerDisk, RootDataVolume)
	}
	if opts.DiskSize == "" {
		opts.DiskSize = "10Gi"
	}
	x := &kubevirt{in: in, opts: opts, g: in.guest(), r: &Result{ConfigDisks: map[string][]byte{}}}
	return x.r, x.run()
}

type kubevirt struct {
	in   Input
	opts KubeVirtOptions
	g    engine.Guest
	r    *Result
	// placeholders used, warned about once.
	usedDisk, usedKernel bool
}

func (x *kubevirt) labels(vm string) map[string]string {
	l := map[string]string{LabelNamespace: x.in.Stack.Namespace}
	if vm != "" {
		l[LabelVM] = vm
	}
	return l
}

func (x *kubevirt) run() error {
	st := x.in.Stack
	for _, n := range st.Networks {
		if err := x.network(n); err != nil {
			return err
		}
	}
	for _, v := range st.Volumes {
		if err := x.volume(v); err != nil {
			return err
		}
	}
	for _, vm := range st.VMs {
		if err := x.vm(vm); err != nil {
			return err
		}
	}
	if x.usedDisk {
		x.r.warn("export", "no --disk-image: root disks name the placeholder %s; push the root disk as a containerDisk image and name it", placeholderDisk)
	}
	if x.usedKernel {
		x.r.warn("export", "no --kernel-image: kernelBoot names the placeholder %s; it needs %s and %s", placeholderKernel, KernelPath, InitramfsPath)
	}
	return nil
}

// network is a Multus bridge network: one L2 segment per stack network,
// like stack's switch. The guest keeps its stack address (from its seed or
// guest config), so the CNI assigns none.
func (x *kubevirt) network(n *stackfile.Network) error {
	cni, err := json.Marshal(map[string]any{
		"cniVersion": "0.3.1", "name": x.in.Stack.Namespace + "-" + n.Name, "type": "bridge",
		"bridge": bridgeName(x.in.Stack.Namespace, n.Name), "ipam": map[string]any{},
	})
	if err != nil {
		return err
	}
	nad := networkAttachmentDefinition{
		typeMeta: typeMeta{APIVersion: "k8s.cni.cncf.io/v1", Kind: "NetworkAttachmentDefinition"},
		Metadata: objectMeta{Name: n.Name, Labels: x.labels(""), Annotations: map[string]string{
			AnnotationAddress: n.Address(), "stack.dev/subnet": n.Subnet.String(), "stack.dev/gateway": n.Gateway.String(),
		}},
	}
	nad.Spec.Config = string(cni)
	if n.Egress {
		x.r.warn(n.Address(), "egress: the bridge has no gateway on the cluster; give the network a router at %s or use the pod network", n.Gateway)
	}
	if n.DHCP || n.DNS {
		x.r.warn(n.Address(), "stack's gateway (DHCP, DNS at %s) is not exported; guests keep their static addresses and /etc/hosts", n.Gateway)
	}
	return x.r.add(nad.Kind, n.Name, nad)
}

// bridgeName is the node's Linux bridge for a network (at most 15 bytes).
func bridgeName(ns, net string) string {
	name := "st-" + ns + "-" + net
	if len(name) > 15 {
		name = name[:15]
	}
	return name
}

func (x *kubevirt) volume(v *stackfile.Volume) error {
	c := pvc{
		typeMeta: typeMeta{APIVersion: "v1", Kind: "PersistentVolumeClaim"},
		Metadata: objectMeta{Name: v.Name, Labels: x.labels(""), Annotations: map[string]string{AnnotationAddress: v.Address()}},
		Spec: pvcSpec{AccessModes: []string{"ReadWriteOnce"}, VolumeMode: "Filesystem",
			Resources: resources{Requests: map[string]string{"storage": quantity(v.SizeBytes)}}},
	}
	if v.Format == "ext4" {
		x.r.warn(v.Address(), "stack formats the volume ext4 on the host; the PVC's disk starts blank, so format it in the guest before it is mounted")
	}
	return x.r.add(c.Kind, v.Name, c)
}

// quantity is a byte count as a Kubernetes quantity: in Mi or Gi when it
// divides evenly, else in bytes.
func quantity(b int64) string {
	switch {
	case b >= 1<<30 && b%(1<<30) == 0:
		return strconv.FormatInt(b>>30, 10) + "Gi"
	case b >= 1<<20 && b%(1<<20) == 0:
		return strconv.FormatInt(b>>20, 10) + "Mi"
	}
	return strconv.FormatInt(b, 10)
}

func (x *kubevirt) vm(vm *stackfile.VM) error {
	annotations := map[string]string{AnnotationAddress: vm.Address}
	if len(vm.DependsOn) > 0 {
		// KubeVirt starts every VirtualMachine at once: the order is
		// documented, not enforced.
		annotations[AnnotationDependsOn] = strings.Join(vm.DependsOn, ",")
		x.r.warn(vm.Address, "depends_on %s: KubeVirt has no start order; it is kept as the %s annotation", strings.Join(vm.DependsOn, ", "), AnnotationDependsOn)
	}
	spec := vmiSpec{
		Hostname: vm.Name,
		Domain: domain{
			CPU:    cpu{Cores: vm.CPUs},
			Memory: memory{Guest: strconv.Itoa(vm.MemoryMB) + "Mi"},
		},
	}
	switch vm.Machine {
	case "q35":
		spec.Domain.Machine = &machine{Type: "q35"}
	case "microvm":
		x.r.warn(vm.Address, "machine microvm: KubeVirt runs q35 machines; the VM gets one")
	}
	x.nics(vm, &spec)
	out := virtualMachine{
		typeMeta: typeMeta{APIVersion: "kubevirt.io/v1", Kind: "VirtualMachine"},
		Metadata: objectMeta{Name: vm.Name, Labels: x.labels(vm.Name), Annotations: annotations},
		Spec: vmSpec{
			RunStrategy: runStrategy(vm.Restart),
			Template:    vmiTemplate{Metadata: objectMeta{Name: vm.Name, Labels: x.labels(vm.Name)}},
		},
	}
	var err error
	if vm.Mode() == stackfile.ModeCloudInit {
		err = x.cloudInitVM(vm, &out, &spec)
	} else {
		err = x.initramfsVM(vm, &spec)
	}
	if err != nil {
		return err
	}
	x.disks(vm, &spec)
	spec.ReadinessProbe = x.probe(vm)
	if vm.Pool > 0 {
		x.r.warn(vm.Address, "pool: KubeVirt has no warm pools here (see VirtualMachinePool); dropped")
	}
	out.Spec.Template.Spec = spec
	if err := x.r.add(out.Kind, vm.Name, out); err != nil {
		return err
	}
	return x.service(vm)
}

// runStrategy maps restart: always restarts, on-failure reruns after a
// failure, no runs once.
func runStrategy(restart string) string {
	switch restart {
	case stackfile.RestartAlways:
		return "Always"
	case stackfile.RestartOnFailure:
		return "RerunOnFailure"
	}
	return "Once"
}

// nics attaches the VM to its networks, in order (the first is eth0), with
// stack's MACs: the guest finds its NICs by MAC. The pod network is added
// last when the VM publishes ports, since Services reach pods through it.
func (x *kubevirt) nics(vm *stackfile.VM, spec *vmiSpec) {
	for i, n := range x.in.NICs[vm.Address] {
		name := fmt.Sprintf("%s-%d", n.Network, i)
		spec.Domain.Devices.Interfaces = append(spec.Domain.Devices.Interfaces,
			iface{Name: name, MACAddress: n.MAC.String(), Bridge: &struct{}{}})
		spec.Networks = append(spec.Networks, network{Name: name, Multus: &multusNetwork{NetworkName: n.Network}})
	}
	if len(vm.Publish) == 0 {
		no := false
		spec.Domain.Devices.AutoattachPodInterface = &no
		return
	}
	pod := iface{Name: "pod", Masquerade: &struct{}{}}
	for _, p := range vm.Publish {
		pod.Ports = append(pod.Ports, port{Name: portName(p), Protocol: strings.ToUpper(p.Protocol), Port: p.GuestPort})
	}
	spec.Domain.Devices.Interfaces = append(spec.Domain.Devices.Interfaces, pod)
	spec.Networks = append(spec.Networks, network{Name: "pod", Pod: &struct{}{}})
	x.r.warn(vm.Address, "publish: Services reach the VM on the pod network, its last NIC; stack's guest config does not bring that NIC up, so run DHCP on it in the guest")
}

func portName(p *stackfile.Publish) string {
	return p.Protocol + "-" + strconv.Itoa(p.GuestPort)
}

// cloudInitVM boots the root disk with a NoCloud seed: the user-data and
// network-config that stack generates for the VM.
func (x *kubevirt) cloudInitVM(vm *stackfile.VM, out *virtualMachine, spec *vmiSpec) error {
	seed, err := cloudinit.Build(x.g.SeedInput(vm))
	if err != nil {
		return fmt.Errorf("export %s: build seed: %w", vm.Address, err)
	}
	for _, w := range seed.Warnings {
		x.r.warn(vm.Address, "user_data: %s", w)
	}
	image := x.opts.DiskImage
	if image == "" {
		image, x.usedDisk = placeholderDisk, true
	}
	root := volume{Name: "root"}
	if x.opts.RootDisk == RootDataVolume {
		dv := dataVolumeTemplate{Metadata: objectMeta{Name: vm.Name + "-root"}}
		dv.Spec.Source.Registry = &struct {
			URL string `json:"url"`
		}{URL: "docker://" + image}
		dv.Spec.Storage.Resources.Requests = map[string]string{"storage": x.opts.DiskSize}
		out.Spec.DataVolumeTemplates = append(out.Spec.DataVolumeTemplates, dv)
		root.DataVolume = &dataVolumeSource{Name: dv.Metadata.Name}
	} else {
		root.ContainerDisk = &containerDisk{Image: image}
	}
	spec.Domain.Devices.Disks = append(spec.Domain.Devices.Disks,
		disk{Name: "root", Serial: "root", Disk: diskTarget{Bus: "virtio"}},
		disk{Name: "cloudinit", Disk: diskTarget{Bus: "virtio"}})
	spec.Volumes = append(spec.Volumes, root)

	// The user's document may hold secrets (the evaluated stack no longer
	// says which values came from sensitive variables): whatever the user
	// wrote goes in a Secret; a seed that is stack's alone stays inline.
	ci := &cloudInitNoCloud{}
	if vm.CloudInit != nil && (vm.CloudInit.UserData != "" || len(vm.CloudInit.SSHAuthorizedKeys) > 0) {
		name := vm.Name + "-cloud-init"
		s := secret{
			typeMeta: typeMeta{APIVersion: "v1", Kind: "Secret"},
			Metadata: objectMeta{Name: name, Labels: x.labels(vm.Name)},
			Type:     "Opaque",
			Data:     map[string][]byte{"userdata": seed.UserData, "networkdata": seed.NetworkConfig},
		}
		if err := x.r.add(s.Kind, name, s); err != nil {
			return err
		}
		ci.UserDataSecretRef, ci.NetworkDataSecretRef = &secretRef{Name: name}, &secretRef{Name: name}
	} else {
		ci.UserData, ci.NetworkData = string(seed.UserData), string(seed.NetworkConfig)
	}
	spec.Volumes = append(spec.Volumes, volume{Name: "cloudinit", CloudInitNoCloud: ci})

	if vm.Kernel != "" {
		args := strings.TrimSpace("console=ttyS0 root=/dev/vda rw " + vm.Cmdline + " systemd.machine_id=" + vm.MachineID)
		spec.Domain.Firmware = x.kernelBoot(vm, args)
		x.r.warn(vm.Address, "kernel %s and initramfs %s: put them in the kernel image at %s and %s",
			filepath.Base(vm.Kernel), filepath.Base(vm.Initramfs), KernelPath, InitramfsPath)
	}
	x.r.warn(vm.Address, "root_disk %s: stack cannot upload disks; the VM boots the image named by --disk-image", filepath.Base(vm.RootDisk))
	return nil
}

func (x *kubevirt) kernelBoot(vm *stackfile.VM, args string) *firmware {
	image := x.opts.KernelImage
	if image == "" {
		image, x.usedKernel = placeholderKernel, true
	}
	return &firmware{KernelBoot: &kernelBoot{KernelArgs: args,
		Container: &kernelBootContainer{Image: image, KernelPath: KernelPath, InitrdPath: InitramfsPath}}}
}

// initramfsVM boots the kernel and initramfs directly, with the guest
// init's config on a disk whose serial is guestproto.ConfigDiskSerial.
func (x *kubevirt) initramfsVM(vm *stackfile.VM, spec *vmiSpec) error {
	if vm.Image != "" {
		x.r.warn(vm.Address, "image: image VMs are not exported yet (their root file system is a disk stack builds from the image); the VM runs its command without it")
	}
	if vm.Kernel != "" || vm.Initramfs != "" {
		x.r.warn(vm.Address, "own kernel or initramfs: put them in the kernel image at %s and %s", KernelPath, InitramfsPath)
	}
	spec.Domain.Firmware = x.kernelBoot(vm, strings.TrimSpace("console=ttyS0 quiet panic=-1 "+vm.Cmdline))
	// The engine holds the workload of a VM with dependencies until they
	// are ready; no host releases it on a cluster, so none is held.
	gc := x.g.Config(vm, vm.Command, vm.Env, nil, false)
	raw, err := json.Marshal(gc)
	if err != nil {
		return fmt.Errorf("export %s: encode guest config: %w", vm.Address, err)
	}
	spec.Domain.Devices.Disks = append(spec.Domain.Devices.Disks,
		disk{Name: "stack-config", Serial: guestproto.ConfigDiskSerial, Disk: diskTarget{Bus: "virtio", ReadOnly: true}})
	if x.opts.ConfigImage != "" {
		x.r.ConfigDisks[vm.Name] = qemu.ConfigDiskImage(raw)
		spec.Volumes = append(spec.Volumes, volume{Name: "stack-config", ContainerDisk: &containerDisk{Image: x.opts.ConfigImage + ":" + vm.Name}})
		return nil
	}
	name := vm.Name + "-stack-config"
	cm := configMap{
		typeMeta: typeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		Metadata: objectMeta{Name: name, Labels: x.labels(vm.Name)},
		Data:     map[string]string{"config.json": string(raw)},
	}
	if err := x.r.add(cm.Kind, name, cm); err != nil {
		return err
	}
	spec.Volumes = append(spec.Volumes, volume{Name: "stack-config", ConfigMap: &configMapVolumeSource{Name: name}})
	x.r.warn(vm.Address, "guest config: KubeVirt gives the ConfigMap as an ISO 9660 disk, and the guest init reads its config disk raw; give --config-image (and --write-config-images) to ship it as a containerDisk instead")
	return nil
}

// disks attaches volumes (PVCs) and scratch disks (empty disks), with
// stack's serials: the guest mounts them by serial.
func (x *kubevirt) disks(vm *stackfile.VM, spec *vmiSpec) {
	for _, d := range vm.Disks {
		name := "disk-" + d.Name
		spec.Domain.Devices.Disks = append(spec.Domain.Devices.Disks,
			disk{Name: name, Serial: engine.DiskSerial(d.Name), Disk: diskTarget{Bus: "virtio"}})
		v := volume{Name: name}
		if d.Volume != "" {
			v.PersistentVolumeClaim = &pvcVolumeSource{ClaimName: d.Volume}
		} else {
			v.EmptyDisk = &emptyDisk{Capacity: quantity(d.SizeBytes)}
			x.r.warn(vm.Address, "disk %s: the scratch disk is an emptyDisk, which starts blank (stack formats it ext4)", d.Name)
		}
		spec.Volumes = append(spec.Volumes, v)
	}
	for _, sd := range vm.SharedDirs {
		x.r.warn(vm.Address, "shared_dir %s (%s in the guest): a host directory is not on the cluster's nodes; dropped", sd.Name, sd.GuestPath)
	}
}

// probe is the readiness probe: tcp and http probes as KubeVirt's (they
// reach the VM on the pod network), exec through the guest agent.
func (x *kubevirt) probe(vm *stackfile.VM) *probe {
	r := vm.Ready
	p := &probe{PeriodSeconds: 2, FailureThreshold: max(1, int(r.Timeout.Seconds())/2)}
	switch {
	case r.TCP != 0:
		p.TCPSocket = &tcpSocket{Port: r.TCP}
	case r.HTTP != "":
		u, err := url.Parse(r.HTTP)
		if err != nil {
			x.r.warn(vm.Address, "ready http %q: not a URL; no probe", r.HTTP)
			return nil
		}
		port, _ := strconv.Atoi(u.Port())
		if port == 0 {
			port = map[string]int{"https": 443}[u.Scheme]
		}
		if port == 0 {
			port = 80
		}
		p.HTTPGet = &httpGet{Path: u.RequestURI(), Port: port, Scheme: strings.ToUpper(u.Scheme)}
		if h := u.Hostname(); h != vm.Name && h != "localhost" && h != "127.0.0.1" {
			x.r.warn(vm.Address, "ready http %s: probes reach the VM itself, not %s", r.HTTP, h)
		}
	case len(r.Exec) > 0:
		p.Exec = &execCmd{Command: r.Exec}
		x.r.warn(vm.Address, "ready exec: KubeVirt runs exec probes through the QEMU guest agent, which the guest must run")
	default:
		return nil
	}
	if r.TCP != 0 || r.HTTP != "" {
		x.r.warn(vm.Address, "ready: KubeVirt's probe reaches the VM on the pod network, which needs a published port or DHCP on that NIC")
	}
	return p
}

// service publishes a VM's ports: a NodePort Service per VM whose port is
// the stack's host port.
func (x *kubevirt) service(vm *stackfile.VM) error {
	if len(vm.Publish) == 0 {
		return nil
	}
	s := service{
		typeMeta: typeMeta{APIVersion: "v1", Kind: "Service"},
		Metadata: objectMeta{Name: vm.Name, Labels: x.labels(vm.Name), Annotations: map[string]string{AnnotationAddress: vm.Address}},
		Spec:     serviceSpec{Selector: x.labels(vm.Name)},
	}
	for _, p := range vm.Publish {
		s.Spec.Ports = append(s.Spec.Ports, servicePort{Name: portName(p), Protocol: strings.ToUpper(p.Protocol), Port: p.HostPort, TargetPort: p.GuestPort})
	}
	return x.r.add(s.Kind, vm.Name, s)
}
