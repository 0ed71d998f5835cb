package engine

import (
	"net/netip"
	"slices"
	"testing"

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
