package engine

import (
	"github.com/stackvm/stack/hypervisor/qemu/templates"
	"github.com/stackvm/stack/internal/filenames"
)

// Template is a boot template in the cache (see package
// hypervisor/qemu/templates).
type Template = templates.Template

// templateStore is the cache's store of boot templates, where the
// supervisors' QEMU drivers keep them.
func templateStore() *templates.Store {
	return templates.Open(filenames.TemplateCache(filenames.CacheRoot()))
}

// Templates lists the valid boot templates in the cache, most recently
// used first (invalid ones, and makings that were abandoned, are cleared).
func Templates() ([]*Template, error) { return templateStore().List() }

// PruneTemplates removes boot templates: all of them, or (all false) the
// least recently used beyond the cache's limit. VMs restored from a
// removed template keep running: they map its memory until they end.
func PruneTemplates(all bool) ([]*Template, error) {
	s := templateStore()
	if !all {
		return s.Prune("")
	}
	list, err := s.List()
	if err != nil {
		return nil, err
	}
	var removed []*Template
	for _, t := range list {
		if err := s.Remove(t.Meta.Key); err != nil {
			return removed, err
		}
		removed = append(removed, t)
	}
	return removed, nil
}
