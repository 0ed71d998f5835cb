package planner

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"

	"github.com/stackvm/stack/stackfile"
	"github.com/stackvm/stack/state"
)

// Sensitive attributes (stackfile.VM.Sensitive) keep their real value in
// the plan in memory, because the engine boots the guest with it, and are
// hidden at every way out of it:
//
//   - a Change's Old and New are SensitiveValue when the attribute is
//     sensitive (New) or was recorded sealed (Old), and Sensitive is set;
//   - `plan` text and `plan --json` show SensitiveValue for them (also in
//     the JSON's "after");
//   - Record writes them into state sealed (state.Seal: a salted hash),
//     reusing the recorded hash while the value is unchanged;
//   - Save writes them sealed, and the saved stack without them;
//     LoadSaved takes them back from the files loaded again, checking each
//     against its hash, so `up --plan` applies the values the plan was
//     made with or refuses.
//
// A recorded sealed value is compared with the desired one by its hash.

// SensitiveValue is what stands for a sensitive value in a plan.
var SensitiveValue = json.RawMessage(`"(sensitive value)"`)

// sensitiveText is SensitiveValue in the text of a plan, as Terraform
// shows it.
const sensitiveText = "(sensitive value)"

// sameValue compares a recorded attribute with a desired one: a sealed
// recorded value by its hash.
func sameValue(old, want json.RawMessage) bool {
	if state.IsSealed(old) {
		return state.SealedMatches(old, want)
	}
	return jsonEqual(old, want)
}

// maskChange hides the sensitive sides of a change.
func maskChange(c *Change, sensitive bool) {
	if state.IsSealed(c.Old) || (sensitive && c.Old != nil) {
		c.Old, c.Sensitive = SensitiveValue, true
	}
	if sensitive && c.New != nil {
		c.New, c.Sensitive = SensitiveValue, true
	}
}

// withAttrs returns a copy of attrs with each attribute in names replaced
// by f of its value.
func withAttrs(attrs state.Attributes, names []string, f func(name string, v json.RawMessage) json.RawMessage) state.Attributes {
	if len(names) == 0 || attrs == nil {
		return attrs
	}
	out := maps.Clone(attrs)
	for _, n := range names {
		if v, ok := out[n]; ok {
			out[n] = f(n, v)
		}
	}
	return out
}

// maskedAfter is an action's After as `plan --json` shows it.
func maskedAfter(a *Action) state.Attributes {
	return withAttrs(a.After, a.Sensitive, func(string, json.RawMessage) json.RawMessage { return SensitiveValue })
}

// sealedAfter is an action's After with its sensitive attributes sealed.
// prev holds the recorded attributes: a recorded hash of the same value is
// kept, so that state does not change when the value does not.
func sealedAfter(a *Action, prev state.Attributes) state.Attributes {
	return withAttrs(a.After, a.Sensitive, func(n string, v json.RawMessage) json.RawMessage {
		switch {
		case state.IsSealed(v):
			return v // from a saved plan
		case state.SealedMatches(prev[n], v):
			return prev[n]
		}
		return state.Seal(v)
	})
}

// showValue renders an attribute value in the text of a plan.
func showValue(raw json.RawMessage) string {
	if bytes.Equal(raw, SensitiveValue) {
		return sensitiveText
	}
	return compact(raw)
}

// savedStack is desired without its sensitive values, for a saved plan.
func savedStack(desired *stackfile.Stack) *stackfile.Stack {
	if desired == nil {
		return nil
	}
	c := *desired
	c.VMs = make([]*stackfile.VM, len(desired.VMs))
	for i, vm := range desired.VMs {
		c.VMs[i] = vm
		if len(vm.Sensitive) > 0 {
			c.VMs[i] = vm.WithoutSensitive()
		}
	}
	return &c
}

// restoreSensitive puts the sensitive values of a saved plan's stack back
// from fresh, the stack files loaded again, after checking that each hashes
// to what the plan recorded: the plan is applied with the values it was
// made with, or refused as stale.
func restoreSensitive(p *Plan, saved, fresh *stackfile.Stack) error {
	for _, vm := range saved.VMs {
		if len(vm.Sensitive) == 0 {
			continue
		}
		var from *stackfile.VM
		if fresh != nil {
			i := slices.IndexFunc(fresh.VMs, func(f *stackfile.VM) bool { return f.Address == vm.Address })
			if i >= 0 {
				from = fresh.VMs[i]
			}
		}
		if from == nil {
			return fmt.Errorf("%w: %s holds sensitive values, which a saved plan takes from the stack files, and it is no longer in them; run `stack plan` again", ErrStalePlan, vm.Address)
		}
		a := p.Action(vm.Address)
		now := vmAttributes(from, saved.Namespace, nil, nil)
		for _, name := range vm.Sensitive {
			if a == nil || !state.SealedMatches(a.After[name], now[name]) {
				return fmt.Errorf("%w: the sensitive value of %s's %s in the stack files is not the one the plan was made with; run `stack plan` again", ErrStalePlan, vm.Address, name)
			}
		}
		vm.RestoreSensitive(from)
	}
	return nil
}
