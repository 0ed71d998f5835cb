package stack

import "github.com/stackvm/stack/engine"

// Template is a boot template in the cache: a VM shape's memory and device
// state at its guest init's park point, from which VMs of that shape are
// restored instead of booted (docs/templates.md).
type Template = engine.Template

// Templates lists the boot templates in the cache, most recently used
// first.
func Templates() ([]*Template, error) { return engine.Templates() }

// PruneTemplates removes boot templates from the cache: all of them, or
// (all false) the least recently used beyond its limit. It returns what
// it removed.
func PruneTemplates(all bool) ([]*Template, error) { return engine.PruneTemplates(all) }
