package export

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubevirtv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/stackvm/stack/cloudinit"
	"github.com/stackvm/stack/guestinit"
	"github.com/stackvm/stack/planner"
	"github.com/stackvm/stack/stackfile"
)

var update = flag.Bool("update", false, "rewrite golden files")

// example loads one of examples/stacks and plans it against empty state,
// as a first `stack export` of a stack that never ran does.
func example(t *testing.T, file string) Input {
	t.Helper()
	// The cloud-init example takes the Debian image directory as a
	// variable; the loader only checks that the files exist.
	images := t.TempDir()
	for _, f := range []string{"vmlinuz", "initrd.img", "debian-12.raw"} {
		if err := os.WriteFile(filepath.Join(images, f), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	st, src, diags := stackfile.Load(stackfile.Options{
		Dir: "../examples/stacks", Files: []string{file},
		Environ: []string{stackfile.EnvPrefix + "debian_image_dir=" + images},
	})
	if diags.HasErrors() {
		var b bytes.Buffer
		src.WriteDiagnostics(&b, diags, false, 0)
		t.Fatalf("load %s: %s", file, b.String())
	}
	plan, err := planner.Make(planner.Input{Desired: st})
	if err != nil {
		t.Fatalf("plan %s: %v", file, err)
	}
	return Input{Stack: st, NICs: plan.NICs}
}

func examples(t *testing.T) []string {
	files, err := filepath.Glob("../examples/stacks/*.hcl")
	if err != nil || len(files) < 5 {
		t.Fatalf("want the 5 examples, got %d (%v)", len(files), err)
	}
	for i, f := range files {
		files[i] = filepath.Base(f)
	}
	return files
}

func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o600); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden (run with -update): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (run with -update and review the diff):\n%s", path, got)
	}
}

func warningLines(r *Result) []byte {
	var b bytes.Buffer
	for _, w := range r.Warnings {
		b.WriteString(w.String() + "\n")
	}
	return b.Bytes()
}

// TestKubeVirtExamples exports every example: the manifests and warnings
// match the golden files, every object decodes strictly into the published
// Kubernetes and KubeVirt types, and the seeds and guest configs inside are
// the bytes stack boots the VMs with.
func TestKubeVirtExamples(t *testing.T) {
	for _, file := range examples(t) {
		t.Run(file, func(t *testing.T) {
			in := example(t, file)
			r, err := KubeVirt(in, KubeVirtOptions{})
			if err != nil {
				t.Fatal(err)
			}
			base := filepath.Join("testdata", "kubevirt", strings.TrimSuffix(file, ".hcl"))
			golden(t, base+".yaml", r.Stream())
			golden(t, base+".warnings", warningLines(r))
			objs := decodeStrict(t, r)
			checkGuestBytes(t, in, objs)
		})
	}
}

// decoded are an export's objects, decoded into the published types.
type decoded struct {
	vms        map[string]*kubevirtv1.VirtualMachine
	secrets    map[string]*corev1.Secret
	configMaps map[string]*corev1.ConfigMap
	pvcs       map[string]*corev1.PersistentVolumeClaim
	services   map[string]*corev1.Service
	nads       map[string]*nad
}

// nad mirrors the published NetworkAttachmentDefinition CRD
// (k8s.cni.cncf.io/v1; its Go client module is not on the module proxy
// this project uses): metadata and a spec with only a config string.
type nad struct {
	metav1.TypeMeta `json:",inline"`
	Metadata        metav1.ObjectMeta `json:"metadata"`
	Spec            struct {
		Config string `json:"config"`
	} `json:"spec"`
}

// bridgeCNI is the bridge CNI plugin's configuration, as far as the
// exporter writes it.
type bridgeCNI struct {
	CNIVersion string         `json:"cniVersion"`
	Name       string         `json:"name"`
	Type       string         `json:"type"`
	Bridge     string         `json:"bridge"`
	IPAM       map[string]any `json:"ipam"`
}

// decodeStrict decodes each object of r (one YAML document each, and the
// stream split back into the same documents) strictly: an unknown or
// duplicate field is an error.
func decodeStrict(t *testing.T, r *Result) *decoded {
	t.Helper()
	d := &decoded{
		vms: map[string]*kubevirtv1.VirtualMachine{}, secrets: map[string]*corev1.Secret{},
		configMaps: map[string]*corev1.ConfigMap{}, pvcs: map[string]*corev1.PersistentVolumeClaim{},
		services: map[string]*corev1.Service{}, nads: map[string]*nad{},
	}
	docs := strings.Split(string(r.Stream()), "\n---\n")
	if len(docs) != len(r.Objects) {
		t.Fatalf("the stream has %d documents, want %d", len(docs), len(r.Objects))
	}
	for _, o := range r.Objects {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(o.Data, &tm); err != nil {
			t.Fatalf("%s: %v", o.File, err)
		}
		var obj any
		var wantGV string
		var name *string
		switch tm.Kind {
		case "VirtualMachine":
			v := &kubevirtv1.VirtualMachine{}
			obj, wantGV, name = v, kubevirtv1.SchemeGroupVersion.String(), &v.Name
			defer func() { d.vms[v.Name] = v }()
		case "Secret":
			v := &corev1.Secret{}
			obj, wantGV, name = v, "v1", &v.Name
			defer func() { d.secrets[v.Name] = v }()
		case "ConfigMap":
			v := &corev1.ConfigMap{}
			obj, wantGV, name = v, "v1", &v.Name
			defer func() { d.configMaps[v.Name] = v }()
		case "PersistentVolumeClaim":
			v := &corev1.PersistentVolumeClaim{}
			obj, wantGV, name = v, "v1", &v.Name
			defer func() { d.pvcs[v.Name] = v }()
		case "Service":
			v := &corev1.Service{}
			obj, wantGV, name = v, "v1", &v.Name
			defer func() { d.services[v.Name] = v }()
		case "NetworkAttachmentDefinition":
			v := &nad{}
			obj, wantGV, name = v, "k8s.cni.cncf.io/v1", &v.Metadata.Name
			defer func() { d.nads[v.Metadata.Name] = v }()
		default:
			t.Fatalf("%s: unexpected kind %q", o.File, tm.Kind)
		}
		if tm.APIVersion != wantGV {
			t.Errorf("%s: apiVersion %q, want %q", o.File, tm.APIVersion, wantGV)
		}
		if err := yaml.UnmarshalStrict(o.Data, obj); err != nil {
			t.Fatalf("%s does not decode strictly into %T: %v", o.File, obj, err)
		}
		if tm.Kind == "VirtualMachine" {
			if err := strictVMISpec(o.Data); err != nil {
				t.Fatalf("%s: %v", o.File, err)
			}
		}
		if want := strings.ToLower(tm.Kind) + "-" + *name + ".yaml"; o.File != want {
			t.Errorf("file %s, want %s", o.File, want)
		}
	}
	return d
}

// laxFreeVMISpec has VirtualMachineInstanceSpec's fields without its UnmarshalJSON,
// which decodes with a plain json.Unmarshal and so drops unknown fields
// anywhere under spec.template.spec, even in a strict decode.
type laxFreeVMISpec kubevirtv1.VirtualMachineInstanceSpec

// strictVMISpec decodes a VirtualMachine's spec.template.spec strictly.
// (PodNetwork's own UnmarshalJSON is lax too; exports write it empty.)
func strictVMISpec(doc []byte) error {
	raw, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return err
	}
	var vm struct {
		Spec struct {
			Template struct {
				Spec json.RawMessage `json:"spec"`
			} `json:"template"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(raw, &vm); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(vm.Spec.Template.Spec))
	dec.DisallowUnknownFields()
	var spec laxFreeVMISpec
	if err := dec.Decode(&spec); err != nil {
		return fmt.Errorf("spec.template.spec does not decode strictly: %w", err)
	}
	return nil
}

// TestStrictVMISpec: the strict decode catches a misplaced field deep in
// a VM's template, which decoding into kubevirtv1.VirtualMachine alone
// lets through.
func TestStrictVMISpec(t *testing.T) {
	doc := []byte(`apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: x}
spec:
  template:
    spec:
      domain: {devices: {}}
      volumes:
        - name: cloudinit
          cloudInitNoCloud: {userDataSecretRef: {name: x}}
`)
	var vm kubevirtv1.VirtualMachine
	if err := yaml.UnmarshalStrict(doc, &vm); err != nil {
		t.Fatalf("the lax decode now refuses it (%v): strictVMISpec may be unneeded", err)
	}
	if err := strictVMISpec(doc); err == nil || !strings.Contains(err.Error(), "userDataSecretRef") {
		t.Errorf("strictVMISpec = %v, want an unknown field error", err)
	}
}

// checkGuestBytes: each cloud-init VM's user-data and network-config, and
// each initramfs VM's guest config, are what the engine's Guest (which
// vmSpec boots VMs with) generates, byte for byte.
func checkGuestBytes(t *testing.T, in Input, d *decoded) {
	t.Helper()
	g := in.guest()
	for _, vm := range in.Stack.VMs {
		v := d.vms[vm.Name]
		if v == nil {
			t.Fatalf("no VirtualMachine %s", vm.Name)
		}
		spec := v.Spec.Template.Spec
		if vm.Mode() == stackfile.ModeCloudInit {
			seed, err := cloudinit.Build(g.SeedInput(vm))
			if err != nil {
				t.Fatal(err)
			}
			var user, net []byte
			for _, vol := range spec.Volumes {
				ci := vol.CloudInitNoCloud
				switch {
				case ci == nil:
				case ci.UserDataSecretRef != nil:
					s := d.secrets[ci.UserDataSecretRef.Name]
					if s == nil || ci.NetworkDataSecretRef == nil || ci.NetworkDataSecretRef.Name != s.Name {
						t.Fatalf("%s: seed secret %s missing", vm.Name, ci.UserDataSecretRef.Name)
					}
					user, net = s.Data["userdata"], s.Data["networkdata"]
				default:
					user, net = []byte(ci.UserData), []byte(ci.NetworkData)
				}
			}
			if !bytes.Equal(user, seed.UserData) {
				t.Errorf("%s: exported user-data differs from the seed stack boots with:\n%s\nwant:\n%s", vm.Name, user, seed.UserData)
			}
			if !bytes.Equal(net, seed.NetworkConfig) {
				t.Errorf("%s: exported network-config differs from the seed stack boots with", vm.Name)
			}
			continue
		}
		cm := d.configMaps[vm.Name+"-stack-config"]
		if cm == nil {
			t.Fatalf("%s: no guest config ConfigMap", vm.Name)
		}
		want, err := json.Marshal(g.Config(vm, vm.Command, vm.Env, nil, false))
		if err != nil {
			t.Fatal(err)
		}
		got := cm.Data["config.json"]
		if got != string(want) {
			t.Errorf("%s: exported guest config differs from the one stack boots with:\n%s\nwant:\n%s", vm.Name, got, want)
		}
		if _, err := guestinit.ParseConfig([]byte(got)); err != nil {
			t.Errorf("%s: the guest init refuses the exported config: %v", vm.Name, err)
		}
		var found bool
		for _, dk := range spec.Domain.Devices.Disks {
			found = found || dk.Name == "stack-config" && dk.Serial == "stack-config"
		}
		if !found {
			t.Errorf("%s: no config disk with the guest init's serial", vm.Name)
		}
	}
}

// TestKubeVirtQuickstart pins down the mapping on the quickstart, read back
// through the published types.
func TestKubeVirtQuickstart(t *testing.T) {
	in := example(t, "quickstart.hcl")
	r, err := KubeVirt(in, KubeVirtOptions{KernelImage: "registry.example/stack/guest:1"})
	if err != nil {
		t.Fatal(err)
	}
	d := decodeStrict(t, r)
	if len(d.nads) != 1 || d.nads["lan"] == nil {
		t.Fatalf("want one NetworkAttachmentDefinition lan, got %v", d.nads)
	}
	var cni bridgeCNI
	dec := json.NewDecoder(strings.NewReader(d.nads["lan"].Spec.Config))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cni); err != nil || cni.Type != "bridge" || cni.Bridge == "" || len(cni.Bridge) > 15 {
		t.Errorf("lan's CNI config %+v (%v): want a bridge named in 15 bytes", cni, err)
	}
	if got := d.nads["lan"].Metadata.Annotations["stack.dev/subnet"]; got != "10.42.0.0/24" {
		t.Errorf("lan's subnet annotation %q", got)
	}
	web, client := d.vms["web"], d.vms["client"]
	if web == nil || client == nil {
		t.Fatalf("VMs %v", d.vms)
	}
	for _, v := range []*kubevirtv1.VirtualMachine{web, client} {
		spec := v.Spec.Template.Spec
		kb := spec.Domain.Firmware.KernelBoot
		if kb == nil || kb.Container == nil || kb.Container.Image != "registry.example/stack/guest:1" || kb.Container.KernelPath != KernelPath || kb.Container.InitrdPath != InitramfsPath {
			t.Errorf("%s: kernelBoot %+v", v.Name, kb)
		}
		nics := in.NICs["vm."+v.Name]
		ifs := spec.Domain.Devices.Interfaces
		if len(ifs) != 1 || len(nics) != 1 || ifs[0].MacAddress != nics[0].MAC.String() || ifs[0].Bridge == nil ||
			spec.Networks[0].Multus == nil || spec.Networks[0].Multus.NetworkName != "lan" {
			t.Errorf("%s: interfaces %+v networks %+v, want one bridge on lan with MAC %v", v.Name, ifs, spec.Networks, nics)
		}
		if p := spec.Domain.Devices.AutoattachPodInterface; p == nil || *p {
			t.Errorf("%s: the pod network is attached though nothing is published", v.Name)
		}
		if spec.Domain.CPU.Cores != 1 || spec.Domain.Memory.Guest.String() != "256Mi" {
			t.Errorf("%s: cpu %+v memory %v", v.Name, spec.Domain.CPU, spec.Domain.Memory.Guest)
		}
		if v.Spec.RunStrategy == nil || *v.Spec.RunStrategy != kubevirtv1.RunStrategyOnce {
			t.Errorf("%s: runStrategy %v, want Once (restart = \"no\")", v.Name, v.Spec.RunStrategy)
		}
	}
	if p := web.Spec.Template.Spec.ReadinessProbe; p == nil || p.TCPSocket == nil || p.TCPSocket.Port.IntValue() != 80 {
		t.Errorf("web: readiness probe %+v, want tcp 80", p)
	}
	if got := client.Annotations[AnnotationDependsOn]; got != "vm.web" {
		t.Errorf("client: depends-on annotation %q", got)
	}
	if !hasWarning(r, "vm.client", "no start order") {
		t.Errorf("no warning that KubeVirt does not order client after web: %v", r.Warnings)
	}
	if hasWarning(r, "export", "--kernel-image") {
		t.Errorf("a placeholder warning though --kernel-image was given")
	}
}

// TestKubeVirtRootDisk: a cloud-init VM's root disk is a containerDisk by
// default and a DataVolume imported from the registry on request; the
// user's cloud-config travels in a Secret.
func TestKubeVirtRootDisk(t *testing.T) {
	in := example(t, "cloud-init.hcl")
	for _, tc := range []struct {
		opts KubeVirtOptions
		dv   bool
	}{
		{KubeVirtOptions{DiskImage: "registry.example/debian:12"}, false},
		{KubeVirtOptions{RootDisk: RootDataVolume, DiskImage: "registry.example/debian:12", DiskSize: "4Gi"}, true},
	} {
		r, err := KubeVirt(in, tc.opts)
		if err != nil {
			t.Fatal(err)
		}
		d := decodeStrict(t, r)
		vm := d.vms["debian"]
		var root *kubevirtv1.Volume
		for i, v := range vm.Spec.Template.Spec.Volumes {
			if v.Name == "root" {
				root = &vm.Spec.Template.Spec.Volumes[i]
			}
		}
		switch {
		case root == nil:
			t.Fatalf("no root volume")
		case tc.dv:
			dvt := vm.Spec.DataVolumeTemplates
			if root.DataVolume == nil || len(dvt) != 1 || dvt[0].Name != root.DataVolume.Name ||
				dvt[0].Spec.Source.Registry == nil || *dvt[0].Spec.Source.Registry.URL != "docker://registry.example/debian:12" ||
				dvt[0].Spec.Storage.Resources.Requests.Storage().String() != "4Gi" {
				t.Errorf("datavolume: root %+v templates %+v", root, dvt)
			}
		default:
			if root.ContainerDisk == nil || root.ContainerDisk.Image != "registry.example/debian:12" {
				t.Errorf("containerdisk: root %+v", root)
			}
		}
		if len(d.secrets) != 1 || d.secrets["debian-cloud-init"] == nil {
			t.Errorf("want the user's cloud-config in Secret debian-cloud-init, got %v", d.secrets)
		}
		if pvc := d.pvcs["data"]; pvc == nil || pvc.Spec.Resources.Requests.Storage().String() != "256Mi" {
			t.Errorf("volume data: PVC %+v, want 256Mi", pvc)
		}
		if hasWarning(r, "export", "--disk-image") {
			t.Errorf("a placeholder warning though --disk-image was given")
		}
	}
	if _, err := KubeVirt(in, KubeVirtOptions{RootDisk: "floppy"}); err == nil {
		t.Errorf("an unknown root disk kind was accepted")
	}
}

func hasWarning(r *Result, address, substr string) bool {
	for _, w := range r.Warnings {
		if w.Address == address && strings.Contains(w.Message, substr) {
			return true
		}
	}
	return false
}
