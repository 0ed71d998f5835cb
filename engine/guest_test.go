package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stackvm/stack/cloudinit"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/planner"
	"github.com/stackvm/stack/stackfile"
	"github.com/stackvm/stack/state"
)

// TestVMSpecBootsGuest: what vmSpec boots a VM with (the guest init's
// config, the seed ISO's files) is what Guest computes without I/O, which
// is what `stack export` ships; only stack's exec keys are the engine's own.
func TestVMSpecBootsGuest(t *testing.T) {
	dir := t.TempDir()
	for name, size := range map[string]int{"base.raw": 1 << 20, "k": 0, "i": 0} {
		if err := os.WriteFile(filepath.Join(dir, name), make([]byte, size), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	file := `
network "lan" { subnet = "10.9.0.0/24" }
volume "data" { size = "16MiB" }
vm "init" {
  kernel = "k"
  initramfs = "i"
  command = ["sh", "-c", "exec sleep 1"]
  env = { A = "b" }
  network "lan" {}
  disk "data" {
    volume = volume.data
    guest_path = "/data"
  }
  ready { tcp = 80 }
}
vm "ci" {
  kernel = "k"
  initramfs = "i"
  root_disk = "base.raw"
  depends_on = [vm.init]
  cloud_init { user_data = "#cloud-config\nruncmd: [[touch, /x]]\n" }
  network "lan" {}
  disk "scratch" {
    size = "8MiB"
    guest_path = "/scratch"
  }
}
`
	if err := os.WriteFile(filepath.Join(dir, "stack.hcl"), []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	st, src, diags := stackfile.Load(stackfile.Options{Dir: dir, Environ: []string{}})
	if diags.HasErrors() {
		var b bytes.Buffer
		src.WriteDiagnostics(&b, diags, false, 0)
		t.Fatal(b.String())
	}
	plan, err := planner.Make(planner.Input{Desired: st})
	if err != nil {
		t.Fatal(err)
	}
	e := New(Options{Namespace: st.Namespace, StateRoot: filepath.Join(dir, "state")})
	a := e.newApplier(state.New(st.Namespace), st, nil)
	a.plan = plan
	g := Guest{Namespace: st.Namespace, Desired: st, NICs: plan.NICs}
	for _, vm := range st.VMs {
		for _, hold := range []bool{false, true} {
			spec, err := a.vmSpec(context.Background(), vm, hold)
			if err != nil {
				t.Fatalf("%s: vmSpec: %v", vm.Name, err)
			}
			if vm.Mode() == stackfile.ModeInitramfs {
				want, err := json.Marshal(g.Config(vm, vm.Command, vm.Env, nil, hold))
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(spec.GuestConfig, want) {
					t.Errorf("%s: vmSpec's guest config\n%s\nGuest.Config\n%s", vm.Name, spec.GuestConfig, want)
				}
				continue
			}
			in := g.SeedInput(vm)
			if err := e.execKeys(&in, a.vmDir(vm.Name)); err != nil {
				t.Fatal(err)
			}
			want, err := cloudinit.Build(in)
			if err != nil {
				t.Fatal(err)
			}
			_, files, err := cloudinit.ReadISO(filepath.Join(a.vmDir(vm.Name), filenames.SeedISO))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(files[cloudinit.FileUserData], want.UserData) || !bytes.Equal(files[cloudinit.FileNetworkConfig], want.NetworkConfig) ||
				!bytes.Equal(files[cloudinit.FileMetaData], want.MetaData) {
				t.Errorf("%s: the seed vmSpec wrote is not the one Guest.SeedInput builds", vm.Name)
			}
		}
	}
}
