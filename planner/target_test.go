package planner

import (
	"errors"
	"strings"
	"testing"

	"github.com/stackvm/stack/state"
)

func deps(p *Plan) string {
	var parts []string
	for _, a := range p.Actions {
		if len(a.DependsOn) > 0 {
			parts = append(parts, a.Address+"<-"+strings.Join(a.DependsOn, ","))
		}
	}
	for _, k := range sortedKeys(p.Barriers) {
		parts = append(parts, k+"="+strings.Join(p.Barriers[k], ","))
	}
	return strings.Join(parts, " ")
}

func TestTargets(t *testing.T) {
	base := baseFixture()
	created := mustPlan(t, Input{Desired: base.stack()})
	applied := record(t, created, state.New("demo"))
	changed := base
	changed.dbMem, changed.webMem = 1024, 512
	dead := map[string]Liveness{"vm.web[0]": {Detail: "exited"}, "vm.web[1]": {Detail: "exited"}}

	for _, tc := range []struct {
		name    string
		in      Input
		kinds   string // the actions kept
		deps    string // their DependsOn, then the barriers
		leftOut string
		err     string
	}{{
		name:    "a dependency alone",
		in:      Input{Desired: base.stack(), Targets: []string{"db"}},
		kinds:   "network.lan=create vm.db=create volume.pgdata=create",
		deps:    "vm.db<-network.lan,volume.pgdata",
		leftOut: "vm.web[0] vm.web[1]",
	}, {
		name:    "an instance brings what it depends on",
		in:      Input{Desired: base.stack(), Targets: []string{"web-0"}},
		kinds:   "network.lan=create vm.db=create vm.web[0]=create volume.pgdata=create",
		deps:    "vm.db<-network.lan,volume.pgdata vm.web[0]<-network.lan,vm.db/ready vm.db/ready=vm.db",
		leftOut: "vm.web[1]",
	}, {
		name:  "a block names every instance",
		in:    Input{Desired: base.stack(), Targets: []string{"web"}},
		kinds: "network.lan=create vm.db=create vm.web[0]=create vm.web[1]=create volume.pgdata=create",
		deps:  "vm.db<-network.lan,volume.pgdata vm.web[0]<-network.lan,vm.db/ready vm.web[1]<-network.lan,vm.db/ready vm.db/ready=vm.db",
	}, {
		name:    "an address",
		in:      Input{Desired: base.stack(), Targets: []string{"vm.web[1]"}},
		kinds:   "network.lan=create vm.db=create vm.web[1]=create volume.pgdata=create",
		deps:    "vm.db<-network.lan,volume.pgdata vm.web[1]<-network.lan,vm.db/ready vm.db/ready=vm.db",
		leftOut: "vm.web[0]",
	}, {
		name:    "changes elsewhere are left out",
		in:      Input{Desired: changed.stack(), State: applied, Targets: []string{"db"}},
		kinds:   "network.lan=no-op vm.db=replace volume.pgdata=no-op",
		leftOut: "vm.web[0] vm.web[1]",
	}, {
		name: "unknown name",
		in:   Input{Desired: base.stack(), Targets: []string{"nope"}},
		err:  `no VM named "nope" in the stack files (it has: db, web-0, web-1)`,
	}, {
		name:    "down of an instance keeps the rest and the networks",
		in:      Input{State: applied, Destroy: true, Targets: []string{"web-1"}},
		kinds:   "vm.web[1]=delete",
		leftOut: "network.lan vm.db vm.web[0]",
	}, {
		name: "down of a dependency of running VMs is refused",
		in:   Input{State: applied, Destroy: true, Targets: []string{"db"}},
		err:  "running VMs depend on the VMs named: web-0 (depends on vm.db), web-1 (depends on vm.db)",
	}, {
		name:    "down --force of a dependency",
		in:      Input{State: applied, Destroy: true, Targets: []string{"db"}, Force: true},
		kinds:   "vm.db=delete",
		leftOut: "network.lan vm.web[0] vm.web[1]",
	}, {
		name:    "dependents that do not run do not refuse",
		in:      Input{State: applied, Destroy: true, Targets: []string{"db"}, Observed: dead},
		kinds:   "vm.db=delete",
		leftOut: "network.lan vm.web[0] vm.web[1]",
	}, {
		name:    "down of a dependency and its dependents keeps the order",
		in:      Input{State: applied, Destroy: true, Targets: []string{"web", "db"}},
		kinds:   "vm.db=delete vm.web[0]=delete vm.web[1]=delete",
		deps:    "vm.db<-vm.web/deleted vm.web/deleted=vm.web[0],vm.web[1]",
		leftOut: "network.lan",
	}, {
		name: "down of an unknown name",
		in:   Input{State: applied, Destroy: true, Targets: []string{"web-7"}},
		err:  `no VM named "web-7" in namespace "demo" (it has: db, web-0, web-1)`,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.in
			if in.State == nil {
				in.State = state.New("demo")
			}
			p, err := Make(in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := kinds(p); got != tc.kinds {
				t.Errorf("actions\n got %s\nwant %s", got, tc.kinds)
			}
			if got := deps(p); got != tc.deps {
				t.Errorf("dependencies\n got %s\nwant %s", got, tc.deps)
			}
			if got := strings.Join(p.LeftOut, " "); got != tc.leftOut {
				t.Errorf("left out\n got %s\nwant %s", got, tc.leftOut)
			}
			// Whatever is kept can be ordered: nothing waits for an
			// action or barrier that was dropped.
			if n := len(p.Order()); n != len(p.Actions) {
				t.Errorf("Order has %d of %d actions", n, len(p.Actions))
			}
		})
	}
}

func TestTargetedPlanRendersWhatIsLeftOut(t *testing.T) {
	p := mustPlan(t, Input{Desired: baseFixture().stack(), Targets: []string{"db"}})
	golden(t, "targeted", p)
}

func TestRefusedDownIsErrDependents(t *testing.T) {
	applied := record(t, mustPlan(t, Input{Desired: baseFixture().stack()}), state.New("demo"))
	if _, err := Make(Input{State: applied, Destroy: true, Targets: []string{"db"}}); !errors.Is(err, ErrDependents) {
		t.Fatalf("error %v, want ErrDependents", err)
	}
}
