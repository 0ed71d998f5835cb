package planner

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/stackvm/stack/stackfile"
	"github.com/stackvm/stack/state"
)

const secret = "hunter2"

// secretStack is the fixture with db's env holding a sensitive value.
func secretStack(pw string) *stackfile.Stack {
	s := baseFixture().stack()
	db := s.VMs[0]
	db.Env = map[string]string{"PGPASSWORD": pw, "GREETING": "hi"}
	db.Sensitive = []string{"env"}
	return s
}

func assertNoSecret(t *testing.T, what string, data []byte) {
	t.Helper()
	if strings.Contains(string(data), secret) {
		t.Errorf("%s shows the sensitive value:\n%s", what, data)
	}
}

func planJSON(t *testing.T, p *Plan) []byte {
	t.Helper()
	data, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// A sensitive attribute is masked in the plan's text and JSON, sealed in
// state and in a saved plan, and compared by its hash: the same value plans
// no change, another value a masked replacement.
func TestSensitivePlanAndState(t *testing.T) {
	p := mustPlan(t, Input{Desired: secretStack(secret)})
	if a := p.Action("vm.db"); a.Kind != Create || !strings.Contains(string(a.After["env"]), secret) {
		t.Fatalf("the plan in memory must keep the real value for the guest: %+v", a)
	}
	text := p.String()
	assertNoSecret(t, "plan text", []byte(text))
	if !strings.Contains(text, "+ env        = (sensitive value)") {
		t.Errorf("plan text does not mask env:\n%s", text)
	}
	js := planJSON(t, p)
	assertNoSecret(t, "plan --json", js)
	if !strings.Contains(string(js), `"env":"(sensitive value)"`) || !strings.Contains(string(js), `"sensitive":["env"]`) {
		t.Errorf("plan --json does not mask env:\n%s", js)
	}

	st := record(t, p, state.New("demo"))
	data, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	assertNoSecret(t, "state", data)
	sealed := st.VMs["vm.db"].Attributes["env"]
	if !state.IsSealed(sealed) {
		t.Fatalf("env is recorded as %s, want a sealed value", sealed)
	}

	again := mustPlan(t, Input{Desired: secretStack(secret), State: st})
	if again.HasChanges() {
		t.Fatalf("the same value plans changes:\n%s", again)
	}
	// Recording again keeps the hash: state does not churn.
	next := record(t, again, st)
	if string(next.VMs["vm.db"].Attributes["env"]) != string(sealed) {
		t.Errorf("an unchanged value was sealed anew")
	}

	changed := mustPlan(t, Input{Desired: secretStack("hunter3"), State: st})
	a := changed.Action("vm.db")
	if a.Kind != Replace || len(a.Changes) != 1 || a.Changes[0].Attribute != "env" || !a.Changes[0].Sensitive {
		t.Fatalf("a changed value: got %+v", a)
	}
	if !strings.Contains(changed.String(), "~ env = (sensitive value) -> (sensitive value) # forces replacement") {
		t.Errorf("plan text of the change:\n%s", changed)
	}
	assertNoSecret(t, "plan --json of the change", planJSON(t, changed))
	if strings.Contains(string(planJSON(t, changed)), "hunter3") {
		t.Error("plan --json shows the new value")
	}
}

// A saved plan holds no sensitive value; loading it takes them from the
// files, and refuses it when they changed or vanished.
func TestSensitiveSavedPlan(t *testing.T) {
	st := state.New("demo")
	st.Serial, st.Lineage = 4, "abc"
	p := mustPlan(t, Input{Desired: secretStack(secret), State: st})
	data, err := p.Save(secretStack(secret))
	if err != nil {
		t.Fatal(err)
	}
	assertNoSecret(t, "saved plan", data)

	got, stack, err := LoadSaved(data, st, secretStack(secret))
	if err != nil {
		t.Fatal(err)
	}
	if stack.VMs[0].Env["PGPASSWORD"] != secret {
		t.Errorf("the loaded stack's env = %v, want the value from the files", stack.VMs[0].Env)
	}
	// What it records is sealed (from the saved plan), not clear.
	next := record(t, got, st)
	if env := next.VMs["vm.db"].Attributes["env"]; !state.IsSealed(env) || !state.SealedMatches(env, p.Action("vm.db").After["env"]) {
		t.Errorf("applying the saved plan records env as %s", env)
	}

	if _, _, err := LoadSaved(data, st, secretStack("hunter3")); !errors.Is(err, ErrStalePlan) {
		t.Errorf("changed value: err = %v, want stale", err)
	}
	if _, _, err := LoadSaved(data, st, nil); !errors.Is(err, ErrStalePlan) {
		t.Errorf("no files: err = %v, want stale", err)
	}
}
