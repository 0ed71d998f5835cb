package export

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	nomadapi "github.com/hashicorp/nomad/api"

	"github.com/stackvm/stack/cloudinit"
	"github.com/stackvm/stack/guestinit"
	"github.com/stackvm/stack/stackfile"
)

// TestNomadExamples exports every example as a Nomad job: it matches the
// golden files, decodes strictly into Nomad's published api.Job, and
// carries the seeds and guest configs stack boots the VMs with.
func TestNomadExamples(t *testing.T) {
	for _, file := range examples(t) {
		t.Run(file, func(t *testing.T) {
			in := example(t, file)
			r, err := Nomad(in, NomadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			base := filepath.Join("testdata", "nomad", strings.TrimSuffix(file, ".hcl"))
			if len(r.Objects) != 1 || r.Objects[0].File != in.Stack.Namespace+".nomad.json" {
				t.Fatalf("objects %v, want one job file", r.Objects)
			}
			golden(t, base+".json", r.Objects[0].Data)
			golden(t, base+".warnings", warningLines(r))

			var jf struct{ Job *nomadapi.Job }
			dec := json.NewDecoder(bytes.NewReader(r.Objects[0].Data))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&jf); err != nil {
				t.Fatalf("the job does not decode strictly into api.Job: %v", err)
			}
			job := jf.Job
			if job == nil || *job.ID != in.Stack.Namespace || len(job.TaskGroups) != len(in.Stack.VMs) {
				t.Fatalf("job %+v: want %d groups", job, len(in.Stack.VMs))
			}
			g := in.guest()
			for i, vm := range in.Stack.VMs {
				tg := job.TaskGroups[i]
				task := tg.Tasks[0]
				if *tg.Name != vm.Name || task.Driver != "qemu" || *task.Resources.Cores != vm.CPUs || *task.Resources.MemoryMB != vm.MemoryMB {
					t.Errorf("group %d: %s driver %s resources %+v", i, *tg.Name, task.Driver, task.Resources)
				}
				args, _ := task.Config["args"].([]any)
				if task.Config["image_path"] == nil || len(args) == 0 {
					t.Errorf("%s: qemu config %v lacks image_path or args", vm.Name, task.Config)
				}
				if vm.Mode() == stackfile.ModeCloudInit {
					want, err := cloudinit.Build(g.SeedInput(vm))
					if err != nil {
						t.Fatal(err)
					}
					got := r.Seeds[vm.Name+"-seed.iso"]
					if got == nil || !bytes.Equal(got.UserData, want.UserData) || !bytes.Equal(got.NetworkConfig, want.NetworkConfig) || !bytes.Equal(got.MetaData, want.MetaData) {
						t.Errorf("%s: the exported seed is not the one stack boots with", vm.Name)
					}
					continue
				}
				want, err := json.Marshal(g.Config(vm, vm.Command, vm.Env, nil, false))
				if err != nil {
					t.Fatal(err)
				}
				if len(task.Templates) != 1 {
					t.Fatalf("%s: templates %+v", vm.Name, task.Templates)
				}
				img := *task.Templates[0].EmbeddedTmpl
				if len(img)%512 != 0 || strings.TrimRight(img, " ") != string(want) {
					t.Errorf("%s: config disk (%d bytes) is not the guest config padded to sectors", vm.Name, len(img))
				}
				if _, err := guestinit.ParseConfig([]byte(img)); err != nil {
					t.Errorf("%s: the guest init refuses the config disk: %v", vm.Name, err)
				}
				if !strings.Contains(strings.Join(strings.Fields(fmt.Sprint(args)), " "), "serial=stack-config") {
					t.Errorf("%s: no config drive with the guest init's serial in %v", vm.Name, args)
				}
				if strings.Contains(img, *task.Templates[0].LeftDelim) {
					t.Errorf("%s: the config holds the template delimiter", vm.Name)
				}
			}
		})
	}
}

// TestNomadPublish: published ports become reserved ports forwarded to the
// guest port.
func TestNomadPublish(t *testing.T) {
	r, err := Nomad(example(t, "volumes.hcl"), NomadOptions{KernelURL: "https://files.example/k/", Datacenters: []string{"dc1"}})
	if err != nil {
		t.Fatal(err)
	}
	var jf struct{ Job *nomadapi.Job }
	if err := json.Unmarshal(r.Objects[0].Data, &jf); err != nil {
		t.Fatal(err)
	}
	tg := jf.Job.TaskGroups[0]
	if len(tg.Networks) != 1 || len(tg.Networks[0].ReservedPorts) == 0 {
		t.Fatalf("networks %+v", tg.Networks)
	}
	p := tg.Networks[0].ReservedPorts[0]
	if p.Value == 0 || p.To == 0 || jf.Job.Datacenters[0] != "dc1" {
		t.Errorf("port %+v datacenters %v", p, jf.Job.Datacenters)
	}
	if src := *tg.Tasks[0].Artifacts[0].GetterSource; src != "https://files.example/k/vmlinuz" {
		t.Errorf("kernel artifact %s", src)
	}
	if hasWarning(r, "export", "--kernel-url") {
		t.Errorf("a placeholder warning though --kernel-url was given")
	}
}
