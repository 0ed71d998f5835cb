package engine

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/stackvm/stack/planner"
	"github.com/stackvm/stack/stackfile"
	"github.com/stackvm/stack/state"
)

func TestProbePorts(t *testing.T) {
	nics := []state.NIC{{Network: "lan", IP: netip.MustParseAddr("10.42.0.3")}}
	for _, tc := range []struct {
		name  string
		ready stackfile.Ready
		want  []int
	}{
		{"no probe", stackfile.Ready{}, nil},
		{"tcp", stackfile.Ready{TCP: 5432}, []int{5432}},
		{"http localhost default port", stackfile.Ready{HTTP: "http://localhost/healthz"}, []int{80}},
		{"https own name", stackfile.Ready{HTTP: "https://web/"}, []int{443}},
		{"http own address and port", stackfile.Ready{HTTP: "http://10.42.0.3:8080/"}, []int{8080}},
		{"http another VM", stackfile.Ready{HTTP: "http://db:8080/"}, nil},
		{"exec", stackfile.Ready{Exec: []string{"true"}}, nil},
	} {
		vm := &stackfile.VM{Name: "web", Ready: tc.ready}
		if got := probePorts(vm, nics); !slices.Equal(got, tc.want) {
			t.Errorf("%s: probePorts = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestPrefetch: the built-in image is resolved ahead of the plan only when
// the plan boots a VM that uses it.
func TestPrefetch(t *testing.T) {
	own := &stackfile.VM{Name: "own", Address: "vm.own", Kernel: "/k", Initramfs: "/i"}
	builtin := &stackfile.VM{Name: "web", Address: "vm.web"}
	create := func(addr string) *planner.Action {
		return &planner.Action{Address: addr, Type: planner.TypeVM, Kind: planner.Create}
	}
	for _, tc := range []struct {
		name    string
		actions []*planner.Action
		want    bool
	}{
		{"creates a VM on the built-in image", []*planner.Action{create("vm.own"), create("vm.web")}, true},
		{"creates only a VM with its own kernel", []*planner.Action{create("vm.own")}, false},
		{"leaves the built-in VM alone", []*planner.Action{create("vm.own"), {Address: "vm.web", Type: planner.TypeVM, Kind: planner.NoOp}}, false},
	} {
		called := make(chan struct{}, 1)
		e := New(Options{Images: func(context.Context) (string, string, error) {
			called <- struct{}{}
			return "/vmlinuz", "/initrd", nil
		}})
		a := e.newApplier(state.New("ns"), &stackfile.Stack{VMs: []*stackfile.VM{own, builtin}}, nil)
		started := a.prefetch(context.Background(), &planner.Plan{Actions: tc.actions})
		if started != tc.want {
			t.Errorf("%s: Prefetch started = %t, want %t", tc.name, started, tc.want)
		}
		if !started {
			continue
		}
		select {
		case <-called:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the image was not resolved", tc.name)
		}
		// The engine's own call later gets the prefetched result.
		if k, _, err := a.image(context.Background()); k != "/vmlinuz" || err != nil {
			t.Errorf("%s: image after prefetch = %q, %v", tc.name, k, err)
		}
		if len(called) != 0 {
			t.Errorf("%s: the image was resolved twice", tc.name)
		}
	}
}
