package stack

import (
	"context"

	"github.com/stackvm/stack/engine"
)

// Snapshot is a saved namespace (docs/snapshots.md).
type Snapshot = engine.Snapshot

// SnapshotOptions tune SaveSnapshot.
type SnapshotOptions = engine.SnapshotOptions

// RestoreOptions tune RestoreSnapshot.
type RestoreOptions = engine.RestoreOptions

// SaveSnapshot saves the running namespace as snapshot name: its VMs are
// paused together and saved, with their disks and volumes as they were at
// that moment, and run on. It needs no stack files.
func (p *Project) SaveSnapshot(ctx context.Context, name string, opts SnapshotOptions) (*Snapshot, error) {
	if opts.StackFiles == nil {
		opts.StackFiles = p.Stack.Files
	}
	return p.engine().SaveSnapshot(ctx, name, opts)
}

// RestoreSnapshot brings the namespace to a snapshot's state (of this
// namespace, or of opts.From: an independent copy). It needs no stack
// files.
func (p *Project) RestoreSnapshot(ctx context.Context, name string, opts RestoreOptions) (*Snapshot, error) {
	return p.engine().RestoreSnapshot(ctx, name, opts)
}

// Snapshots lists the namespace's snapshots, oldest first.
func (p *Project) Snapshots() ([]*Snapshot, error) { return p.engine().Snapshots() }

// RemoveSnapshot removes one of the namespace's snapshots.
func (p *Project) RemoveSnapshot(name string) error { return p.engine().RemoveSnapshot(name) }
