// Package export owns `stack export`: it translates an evaluated stack, with
// the plan's addresses and MACs, into another orchestrator's manifests
// (KubeVirt today) for stacks that outgrow one host.
//
// It does no I/O, but for WriteKernelImage. The guest-side bytes it ships (cloud-init seeds, guest
// init configs) come from engine.Guest and package cloudinit, the code
// that stack itself boots VMs with, so that both agree. What does not
// translate is returned as a Warning, never dropped silently; see
// docs/scale-out.md for the mapping and its limits.
package export

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/stackvm/stack/cloudinit"
	"github.com/stackvm/stack/engine"
	"github.com/stackvm/stack/stackfile"
	"github.com/stackvm/stack/state"
)

// Input is what an export reads: the evaluated stack and the plan's NICs.
type Input struct {
	Stack *stackfile.Stack
	// NICs are the plan's resolved attachments, by VM address (see
	// planner.Plan.NICs): the exported VMs keep stack's addresses and MACs.
	NICs map[string][]state.NIC
}

func (in Input) guest() engine.Guest {
	return engine.Guest{Namespace: in.Stack.Namespace, Desired: in.Stack, NICs: in.NICs}
}

// Object is one exported manifest.
type Object struct {
	// File is the object's file name in an output directory:
	// <kind>-<name>.yaml, lower case (KubeVirt), <namespace>.nomad.json
	// (Nomad).
	File string
	Data []byte
}

// Warning is something of the stack that the target cannot express, with
// the address of the resource it is about.
type Warning struct {
	Address string
	Message string
}

func (w Warning) String() string { return w.Address + ": " + w.Message }

// Result is an export: its objects in apply order and its warnings.
type Result struct {
	Objects  []Object
	Warnings []Warning
	// Seeds are NoCloud seeds to write as ISO files (cloudinit.WriteISO)
	// beside the objects, by file name (Nomad downloads them).
	Seeds map[string]*cloudinit.Seed
	// ConfigDisks are the initramfs VMs' guest config disks (the guest
	// config zero-padded to whole sectors), by VM name, to write with
	// WriteConfigImages when the export names config images.
	ConfigDisks map[string][]byte
}

// Stream is every object as one YAML stream, documents separated by
// "---" lines (what `kubectl apply -f -` reads).
func (r *Result) Stream() []byte {
	var b bytes.Buffer
	for i, o := range r.Objects {
		if i > 0 {
			b.WriteString("---\n")
		}
		b.Write(o.Data)
	}
	return b.Bytes()
}

func (r *Result) warn(address, format string, args ...any) {
	r.Warnings = append(r.Warnings, Warning{Address: address, Message: fmt.Sprintf(format, args...)})
}

// add encodes obj (a struct with JSON tags) as YAML.
func (r *Result) add(kind, name string, obj any) error {
	data, err := toYAML(obj)
	if err != nil {
		return fmt.Errorf("encode %s %s: %w", kind, name, err)
	}
	r.Objects = append(r.Objects, Object{File: strings.ToLower(kind) + "-" + name + ".yaml", Data: data})
	return nil
}

// toYAML encodes v with encoding/json (so that the field names and
// omissions are the JSON tags', as Kubernetes reads them) and re-encodes the
// JSON as block-style YAML in the same key order. Multi-line strings (seeds,
// configs) become literal blocks.
func toYAML(v any) ([]byte, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, err
	}
	blockStyle(&doc)
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// blockStyle drops the flow and quoting styles JSON came with; the encoder
// then quotes only the strings that need it.
func blockStyle(n *yaml.Node) {
	n.Style = 0
	if n.Kind == yaml.ScalarNode && n.Tag == "!!str" && strings.Contains(n.Value, "\n") && literalSafe(n.Value) {
		n.Style = yaml.LiteralStyle
	}
	for _, c := range n.Content {
		blockStyle(c)
	}
}

// literalSafe: a literal block keeps the string byte for byte only when no
// line has trailing white space and there are no tabs or carriage returns.
func literalSafe(s string) bool {
	if strings.ContainsAny(s, "\t\r") {
		return false
	}
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimRight(l, " ") != l {
			return false
		}
	}
	return true
}
