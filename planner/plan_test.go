package planner

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stackvm/stack/stackfile"
	"github.com/stackvm/stack/state"
)

var update = flag.Bool("update", false, "rewrite golden files")

// fixture builds desired stacks in Go so the planner is tested on its own.
type fixture struct {
	webCount int
	webMem   int
	restart  string
	withDB   bool
	dbMem    int
	extraVM  string // name of an extra VM declared first ("api")
	volSize  int64
}

func baseFixture() fixture {
	return fixture{webCount: 2, webMem: 256, restart: "no", withDB: true, dbMem: 512, volSize: 1 << 30}
}

func (f fixture) stack() *stackfile.Stack {
	lan := &stackfile.Network{Name: "lan", Subnet: netip.MustParsePrefix("10.42.0.0/24"),
		Gateway: netip.MustParseAddr("10.42.0.1"), DHCP: true, DNS: true}
	s := &stackfile.Stack{Namespace: "demo", Networks: []*stackfile.Network{lan},
		Volumes: []*stackfile.Volume{{Name: "pgdata", SizeBytes: f.volSize, Format: "ext4"}}}
	vm := func(block, addr, name string, mem int) *stackfile.VM {
		return &stackfile.VM{Address: addr, Name: name, Block: block, CPUs: 1, MemoryMB: mem,
			Restart: "no", Hypervisor: "auto", Machine: "auto",
			Ready: stackfile.Ready{Timeout: 120 * time.Second},
			NICs:  []*stackfile.NIC{{Network: "lan"}}}
	}
	if f.extraVM != "" {
		s.VMs = append(s.VMs, vm(f.extraVM, "vm."+f.extraVM, f.extraVM, 256))
	}
	if f.withDB {
		db := vm("db", "vm.db", "db", f.dbMem)
		db.Disks = []*stackfile.Disk{{Name: "data", Volume: "pgdata", GuestPath: "/var/lib/data"}}
		s.VMs = append(s.VMs, db)
	}
	for i := 0; i < f.webCount; i++ {
		w := vm("web", fmt.Sprintf("vm.web[%d]", i), fmt.Sprintf("web-%d", i), f.webMem)
		w.Command = []string{"httpd", "-f", "-p", "80"}
		w.Restart = f.restart
		w.Publish = []*stackfile.Publish{{HostPort: 8080 + i, GuestPort: 80, Protocol: "tcp"}}
		if f.withDB {
			w.DependsOn = []string{"vm.db"}
		}
		s.VMs = append(s.VMs, w)
	}
	return s
}

// record does what the engine does after applying a plan successfully.
func record(t *testing.T, p *Plan, st *state.State) *state.State {
	t.Helper()
	next := state.New(p.Namespace)
	next.Serial, next.Lineage = st.Serial+1, "lineage-1"
	for k, v := range st.Networks {
		next.Networks[k] = v
	}
	for k, v := range st.Volumes {
		next.Volumes[k] = v
	}
	for k, v := range st.VMs {
		next.VMs[k] = v
	}
	for _, a := range p.Order() {
		p.Record(next, a)
		if vm := next.VMs[a.Address]; vm != nil {
			vm.Status = state.StatusReady
		}
	}
	return next
}

func mustPlan(t *testing.T, in Input) *Plan {
	t.Helper()
	if in.State == nil {
		in.State = state.New("demo")
	}
	p, err := Make(in)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func golden(t *testing.T, name string, p *Plan) {
	t.Helper()
	// As `plan --json` encodes it.
	var js strings.Builder
	enc := json.NewEncoder(&js)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(p); err != nil {
		t.Fatal(err)
	}
	for ext, got := range map[string]string{".txt": p.String(), ".json": js.String()} {
		path := filepath.Join("testdata", name+ext)
		if *update {
			if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("read golden (run with -update to create): %v", err)
		}
		if got != string(want) {
			t.Errorf("%s differs from golden file:\n--- got\n%s\n--- want\n%s", path, got, want)
		}
	}
}

func kinds(p *Plan) string {
	var parts []string
	for _, a := range p.Actions {
		parts = append(parts, a.Address+"="+string(a.Kind))
	}
	return strings.Join(parts, " ")
}

func TestPlans(t *testing.T) {
	base := baseFixture()
	created := mustPlan(t, Input{Desired: base.stack()})
	applied := record(t, created, state.New("demo"))

	t.Run("create", func(t *testing.T) {
		golden(t, "create", created)
		if c := created.Counts(); c.Create != 5 || c.Update+c.Replace+c.Delete != 0 {
			t.Fatalf("counts %+v, want 5 creates", c)
		}
	})
	t.Run("no-op", func(t *testing.T) {
		p := mustPlan(t, Input{Desired: base.stack(), State: applied})
		golden(t, "noop", p)
		if p.HasChanges() {
			t.Fatalf("unchanged stack planned changes: %s", kinds(p))
		}
	})
	t.Run("update", func(t *testing.T) {
		f := base
		f.restart = "always"
		p := mustPlan(t, Input{Desired: f.stack(), State: applied})
		golden(t, "update", p)
		for _, a := range []string{"vm.web[0]", "vm.web[1]"} {
			if k := p.Action(a).Kind; k != Update {
				t.Errorf("%s: %s, want update", a, k)
			}
		}
	})
	t.Run("cpu_limit", func(t *testing.T) {
		// Set and removed: each an update in place of that VM alone (the
		// VMM's cgroup changes, not the VM).
		limited := base.stack()
		limited.VMs[0].CPULimit = 0.5 // vm.db
		withLimit := record(t, mustPlan(t, Input{Desired: limited}), state.New("demo"))
		for _, tc := range []struct {
			name    string
			desired *stackfile.Stack
			from    *state.State
		}{{"set", limited, applied}, {"removed", base.stack(), withLimit}} {
			p := mustPlan(t, Input{Desired: tc.desired, State: tc.from})
			a := p.Action("vm.db")
			if a.Kind != Update || len(a.Changes) != 1 || a.Changes[0].Attribute != "cpu_limit" || a.Changes[0].ForcesReplacement {
				t.Errorf("%s: vm.db %+v, want an update of cpu_limit", tc.name, a)
			}
			if c := p.Counts(); c.Update != 1 || c.Replace+c.Create+c.Delete != 0 {
				t.Errorf("%s: %s, want vm.db updated only", tc.name, kinds(p))
			}
		}
	})
	t.Run("replace", func(t *testing.T) {
		f := base
		f.dbMem = 1024
		p := mustPlan(t, Input{Desired: f.stack(), State: applied})
		golden(t, "replace", p)
		a := p.Action("vm.db")
		if a.Kind != Replace || len(a.Changes) != 1 || a.Changes[0].Attribute != "memory_mb" || !a.Changes[0].ForcesReplacement {
			t.Fatalf("vm.db: %+v", a)
		}
		if p.Counts().Replace != 1 {
			t.Fatalf("only vm.db should be replaced: %s", kinds(p))
		}
		// web waits for db: it depends on it and db is replaced.
		if d := p.Action("vm.web[0]").DependsOn; d != nil {
			t.Fatalf("a no-op must not wait: %v", d)
		}
	})
	t.Run("html", func(t *testing.T) {
		// <, > and & are shown as written, not as \u003c, \u003e, \u0026.
		s := base.stack()
		cmd := []string{"sh", "-c", "echo a >> /f && cat < /f"}
		for _, vm := range s.VMs {
			if vm.Address == "vm.web[0]" {
				vm.Command = cmd
			}
		}
		p := mustPlan(t, Input{Desired: s, State: applied})
		golden(t, "html", p)
		if a := p.Action("vm.web[0]"); a.Kind != Replace {
			t.Fatalf("vm.web[0]: %s, want replace", a.Kind)
		}
		js, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		var back struct {
			Actions []struct {
				Address string
				Changes []struct{ New []string }
			}
		}
		if err := json.Unmarshal(js, &back); err != nil {
			t.Fatalf("plan JSON does not decode: %v", err)
		}
		for _, a := range back.Actions {
			if a.Address == "vm.web[0]" && strings.Join(a.Changes[0].New, "|") != strings.Join(cmd, "|") {
				t.Fatalf("command decodes as %q, want %q", a.Changes[0].New, cmd)
			}
		}
	})
	t.Run("delete", func(t *testing.T) {
		f := base
		f.withDB = false
		p := mustPlan(t, Input{Desired: f.stack(), State: applied})
		golden(t, "delete", p)
		if p.Action("vm.db").Kind != Delete {
			t.Fatalf("vm.db not deleted: %s", kinds(p))
		}
		if p.Action("volume.pgdata").Kind != NoOp {
			t.Fatalf("a declared volume must stay: %s", kinds(p))
		}
	})
	t.Run("drift", func(t *testing.T) {
		p := mustPlan(t, Input{Desired: base.stack(), State: applied,
			Observed: map[string]Liveness{"vm.web[1]": {Alive: false, Detail: "its process was killed by signal 9"}, "vm.db": {Alive: true}}})
		golden(t, "drift", p)
		a := p.Action("vm.web[1]")
		if a.Kind != Replace || a.Reason != ReasonDrift {
			t.Fatalf("vm.web[1]: %s/%s, want replace/drift", a.Kind, a.Reason)
		}
		if p.Counts().Replace != 1 {
			t.Fatalf("only the dead VM is re-created: %s", kinds(p))
		}
	})
	t.Run("stopped", func(t *testing.T) {
		stopped := Liveness{Stopped: true, Detail: "it was stopped (stack stop)"}
		p := mustPlan(t, Input{Desired: base.stack(), State: applied,
			Observed: map[string]Liveness{"vm.db": stopped, "vm.web[0]": {Alive: true}, "vm.web[1]": {Alive: true}}})
		golden(t, "stopped", p)
		a := p.Action("vm.db")
		if a.Kind != Start || a.Reason != ReasonStopped || len(a.Changes) != 0 {
			t.Fatalf("vm.db: %s/%s %+v, want start/stopped without changes", a.Kind, a.Reason, a.Changes)
		}
		if c := p.Counts(); c.Start != 1 || c.Create+c.Update+c.Replace+c.Delete != 0 || !p.HasChanges() {
			t.Fatalf("counts %+v: only the stopped VM is started", c)
		}
		if !strings.Contains(p.Summary(), "1 to start") {
			t.Fatalf("summary %q does not count the start", p.Summary())
		}
		// An in-place change goes with the start; a forcing one replaces.
		f := base
		f.restart, f.dbMem = "always", 1024
		p = mustPlan(t, Input{Desired: f.stack(), State: applied,
			Observed: map[string]Liveness{"vm.db": stopped, "vm.web[0]": stopped, "vm.web[1]": {Alive: true}}})
		if a := p.Action("vm.web[0]"); a.Kind != Start || len(a.Changes) != 1 || a.Changes[0].Attribute != "restart" {
			t.Fatalf("stopped vm.web[0] with a restart change: %s %+v, want start with the change", a.Kind, a.Changes)
		}
		if a := p.Action("vm.db"); a.Kind != Replace {
			t.Fatalf("stopped vm.db with a memory change: %s, want replace", a.Kind)
		}
		// What depends on a started VM waits for it, as for a created one.
		f.dbMem = base.dbMem
		p = mustPlan(t, Input{Desired: f.stack(), State: applied,
			Observed: map[string]Liveness{"vm.db": stopped, "vm.web[0]": {Alive: true}, "vm.web[1]": {Alive: true}}})
		if deps := p.Action("vm.web[1]").DependsOn; len(deps) != 1 || deps[0] != "vm.db"+BarrierReady {
			t.Fatalf("vm.web[1] waits for %v, want vm.db's ready barrier", deps)
		}
		if m := p.Barriers["vm.db"+BarrierReady]; len(m) != 1 || m[0] != "vm.db" {
			t.Fatalf("vm.db's ready barrier has %v, want the started vm.db", m)
		}
	})
	t.Run("count-grow", func(t *testing.T) {
		f := base
		f.webCount = 4
		p := mustPlan(t, Input{Desired: f.stack(), State: applied})
		golden(t, "count-grow", p)
		if got := kinds(p); !strings.Contains(got, "vm.web[2]=create vm.web[3]=create") || p.Counts().Create != 2 {
			t.Fatalf("plan: %s", got)
		}
		assertStableNICs(t, applied, p)
	})
	t.Run("count-shrink", func(t *testing.T) {
		f := base
		f.webCount = 0
		p := mustPlan(t, Input{Desired: f.stack(), State: applied})
		golden(t, "count-shrink", p)
		if c := p.Counts(); c.Delete != 2 || c.Create+c.Replace+c.Update != 0 {
			t.Fatalf("plan: %s", kinds(p))
		}
	})
	t.Run("destroy", func(t *testing.T) {
		p := mustPlan(t, Input{State: applied, Destroy: true})
		golden(t, "destroy", p)
		if p.Action("volume.pgdata") != nil {
			t.Fatal("down without --volumes must keep volumes")
		}
		// Reverse order: web before db, db before the network.
		if !contains(p.Action("vm.db").DependsOn, "vm.web"+BarrierDeleted) || !contains(p.Barriers["vm.web"+BarrierDeleted], "vm.web[1]") ||
			!contains(p.Action("network.lan").DependsOn, "vm.db") {
			t.Fatalf("deletion order: db %v, lan %v", p.Action("vm.db").DependsOn, p.Action("network.lan").DependsOn)
		}
		pv := mustPlan(t, Input{State: applied, Destroy: true, DeleteVolumes: true})
		if a := pv.Action("volume.pgdata"); a == nil || a.Kind != Delete || !contains(a.DependsOn, "vm.db") {
			t.Fatalf("down --volumes: %+v", a)
		}
	})
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func assertStableNICs(t *testing.T, before *state.State, p *Plan) {
	t.Helper()
	for addr, rec := range before.VMs {
		got := p.NICs[addr]
		if got == nil {
			continue
		}
		for i, n := range rec.NICs {
			if got[i] != n {
				t.Errorf("%s NIC %d renumbered: %+v -> %+v", addr, i, n, got[i])
			}
		}
	}
}

func TestAssignmentsStableWhenVMsAreAddedBefore(t *testing.T) {
	base := baseFixture()
	applied := record(t, mustPlan(t, Input{Desired: base.stack()}), state.New("demo"))
	f := base
	f.extraVM = "api" // sorts first and would take .2 if numbering restarted
	p := mustPlan(t, Input{Desired: f.stack(), State: applied})
	assertStableNICs(t, applied, p)
	if a := p.Action("vm.api"); a.Kind != Create {
		t.Fatalf("vm.api: %s", a.Kind)
	}
	// The new VM takes the lowest free address, not one already in use.
	seen := map[netip.Addr]string{}
	for addr, nics := range p.NICs {
		for _, n := range nics {
			if other, dup := seen[n.IP]; dup {
				t.Fatalf("%s and %s share %s", addr, other, n.IP)
			}
			seen[n.IP] = addr
		}
	}
	if got := p.NICs["vm.api"][0].IP; got != netip.MustParseAddr("10.42.0.5") {
		t.Fatalf("vm.api got %s, want the lowest free address 10.42.0.5", got)
	}
}

func TestPinnedAddressTakesPrecedence(t *testing.T) {
	base := baseFixture()
	applied := record(t, mustPlan(t, Input{Desired: base.stack()}), state.New("demo"))
	dbIP := applied.VMs["vm.db"].NICs[0].IP
	f := base
	s := f.stack()
	// web-1 now pins db's address: db must move (and so be replaced).
	for _, vm := range s.VMs {
		if vm.Address == "vm.web[1]" {
			vm.NICs[0].IP = dbIP
		}
	}
	p := mustPlan(t, Input{Desired: s, State: applied})
	if p.NICs["vm.web[1]"][0].IP != dbIP {
		t.Fatalf("pinned IP not used")
	}
	if p.NICs["vm.db"][0].IP == dbIP {
		t.Fatal("db kept an address now pinned by another VM")
	}
	if p.Action("vm.db").Kind != Replace || p.Action("vm.web[1]").Kind != Replace {
		t.Fatalf("both must be replaced: %s", kinds(p))
	}
}

func TestSubnetExhausted(t *testing.T) {
	f := baseFixture()
	s := f.stack()
	s.Networks[0].Subnet = netip.MustParsePrefix("10.42.0.0/30") // one usable host besides the gateway
	_, err := Make(Input{Desired: s, State: state.New("demo")})
	if err == nil || !strings.Contains(err.Error(), "no free address") {
		t.Fatalf("err = %v", err)
	}
}

func TestVolumeShrinkRefused(t *testing.T) {
	base := baseFixture()
	applied := record(t, mustPlan(t, Input{Desired: base.stack()}), state.New("demo"))
	f := base
	f.volSize = 1 << 20
	_, err := Make(Input{Desired: f.stack(), State: applied})
	if err == nil || !strings.Contains(err.Error(), "cannot shrink") {
		t.Fatalf("err = %v", err)
	}
	f.volSize = 2 << 30
	p := mustPlan(t, Input{Desired: f.stack(), State: applied})
	if p.Action("volume.pgdata").Kind != Update {
		t.Fatalf("growing a volume: %s", kinds(p))
	}
}

func TestDeterministic(t *testing.T) {
	f := baseFixture()
	f.webCount = 12
	a := mustPlan(t, Input{Desired: f.stack()}).String()
	for i := 0; i < 5; i++ {
		if b := mustPlan(t, Input{Desired: f.stack()}).String(); a != b {
			t.Fatal("plan output differs between runs")
		}
	}
	if !strings.Contains(a, "vm.web[2]\n") || strings.Index(a, "vm.web[2]\n") > strings.Index(a, "vm.web[10]\n") {
		t.Fatal("count instances not in numeric order")
	}
}

func TestSavedPlanRefusedWhenStale(t *testing.T) {
	f := baseFixture()
	st := state.New("demo")
	st.Serial, st.Lineage = 4, "abc"
	p := mustPlan(t, Input{Desired: f.stack(), State: st})
	data, err := p.Save(f.stack())
	if err != nil {
		t.Fatal(err)
	}
	got, stack, err := LoadSaved(data, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got.String() != p.String() || len(stack.VMs) != len(f.stack().VMs) {
		t.Fatal("saved plan does not round-trip")
	}
	moved := *st
	moved.Serial = 5
	if _, _, err := LoadSaved(data, &moved, nil); !errors.Is(err, ErrStalePlan) {
		t.Fatalf("serial moved: err = %v", err)
	}
	other := *st
	other.Lineage = "def"
	if _, _, err := LoadSaved(data, &other, nil); !errors.Is(err, ErrStalePlan) {
		t.Fatalf("lineage moved: err = %v", err)
	}
}

func TestOrderRespectsDependencies(t *testing.T) {
	f := baseFixture()
	f.webCount = 3
	created := mustPlan(t, Input{Desired: f.stack()})
	applied := record(t, created, state.New("demo"))
	for name, p := range map[string]*Plan{"create": created, "destroy": mustPlan(t, Input{State: applied, Destroy: true, DeleteVolumes: true})} {
		pos := map[string]int{}
		for i, a := range p.Order() {
			pos[a.Address] = i
		}
		if len(pos) != len(p.Actions) {
			t.Fatalf("%s: order lost actions", name)
		}
		for _, a := range p.Actions {
			for _, d := range a.DependsOn {
				deps := []string{d}
				if IsBarrier(d) {
					deps = p.Barriers[d]
					if len(deps) == 0 {
						t.Fatalf("%s: %s waits for an empty barrier %s", name, a.Address, d)
					}
				}
				for _, dep := range deps {
					if pos[dep] > pos[a.Address] {
						t.Errorf("%s: %s ordered before its dependency %s", name, a.Address, dep)
					}
				}
			}
		}
	}
	// Creation: every web waits for db's barrier; db is its only member.
	if got := created.Barriers["vm.db"+BarrierReady]; len(got) != 1 || got[0] != "vm.db" {
		t.Fatalf("vm.db ready barrier: %v", got)
	}
	if !contains(created.Action("vm.web[2]").DependsOn, "vm.db"+BarrierReady) {
		t.Fatalf("vm.web[2] does not wait for vm.db: %v", created.Action("vm.web[2]").DependsOn)
	}
}

func TestDeriveMACIsLocalUnicastAndStable(t *testing.T) {
	m := DeriveMAC("demo", "web-0", "lan", 0)
	if m != DeriveMAC("demo", "web-0", "lan", 0) || m == DeriveMAC("other", "web-0", "lan", 0) {
		t.Fatal("MAC not stable per namespace/vm/network")
	}
	if m[0] != 0x52 || m[1] != 0x54 || m.IsMulticast() {
		t.Fatalf("MAC %s", m)
	}
}

// An image VM's plan shows the digest its reference resolved to; a tag
// that moved to another image replaces the VM, naming image_id.
func TestImageDigestForcesReplacement(t *testing.T) {
	stackWith := func(id string) *stackfile.Stack {
		return &stackfile.Stack{Namespace: "demo", VMs: []*stackfile.VM{{
			Address: "vm.db", Name: "db", Block: "db", CPUs: 1, MemoryMB: 256,
			Image: "postgres:16", ImageID: id, ImagePorts: []string{"5432/tcp"},
			Ready: stackfile.Ready{Timeout: 2 * time.Minute}, Restart: "no", Hypervisor: "auto", Machine: "auto",
		}}}
	}
	created := mustPlan(t, Input{Desired: stackWith("sha256:aaaa")})
	if s := created.String(); !strings.Contains(s, "sha256:aaaa") || !strings.Contains(s, "5432/tcp") {
		t.Errorf("the plan does not show the image's digest and ports:\n%s", s)
	}
	applied := record(t, created, state.New("demo"))
	if p := mustPlan(t, Input{Desired: stackWith("sha256:aaaa"), State: applied}); p.HasChanges() {
		t.Errorf("the same digest planned changes: %s", kinds(p))
	}
	p := mustPlan(t, Input{Desired: stackWith("sha256:bbbb"), State: applied})
	a := p.Action("vm.db")
	if a.Kind != Replace || len(a.Changes) != 1 || a.Changes[0].Attribute != "image_id" || !a.Changes[0].ForcesReplacement {
		t.Fatalf("a moved tag: %+v", a)
	}
}
