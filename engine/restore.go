package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/internal/fsutil"
	"github.com/stackvm/stack/planner"
	"github.com/stackvm/stack/stackfile"
	"github.com/stackvm/stack/state"
	"github.com/stackvm/stack/supervisor/api"
)

// RestoreOptions tune RestoreSnapshot.
type RestoreOptions struct {
	// From is the namespace whose snapshot it is (default: this one).
	From string
	// Dir, when set, is the snapshot's directory (stacktest's fixtures).
	Dir string
	// Key, when set, must be the snapshot's (SnapshotOptions.Key): a
	// snapshot of other stack files is refused.
	Key         string
	LockTimeout time.Duration
	OnLockWait  func()
	Progress    func(Event)
	// OwnerPID: see UpOptions.
	OwnerPID int
}

// ErrSnapshotKey: the snapshot was saved under another key.
var ErrSnapshotKey = errors.New("the snapshot was saved from other stack files")

// RestoreSnapshot brings the namespace to a snapshot's state: what runs in
// it is removed (its volumes stay, but those the snapshot has are the
// snapshot's again), the snapshot's networks are started and its VMs
// restored, each with its memory, devices and disks as they were saved,
// and they run again at one moment. A snapshot of another namespace makes
// an independent copy: the same machines and addresses inside networks of
// its own, its published ports moved to free host ports. A snapshot that
// is damaged, or whose VMs cannot be restored here (their kernel, QEMU or
// shape changed), is refused before anything is stopped.
func (e *Engine) RestoreSnapshot(ctx context.Context, name string, opts RestoreOptions) (*Snapshot, error) {
	from := opts.From
	if from == "" {
		from = e.opts.Namespace
	}
	if err := filenames.CheckNamespace(from); err != nil {
		return nil, fmt.Errorf("restore snapshot: %w", err)
	}
	dir := opts.Dir
	if dir == "" {
		if err := checkSnapshotName(name); err != nil {
			return nil, err
		}
		dir = filenames.Snapshot(e.opts.StateRoot, from, name)
	}
	m, err := readManifest(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no snapshot %q in namespace %q", name, from)
	}
	if err != nil {
		return nil, err
	}
	if opts.Key != "" && m.Key != opts.Key {
		return nil, fmt.Errorf("restore snapshot %q: %w", name, ErrSnapshotKey)
	}
	if err := m.verify(dir); err != nil {
		return nil, err
	}
	lock, err := e.lock(ctx, opts.LockTimeout, opts.OnLockWait)
	if err != nil {
		return nil, err
	}
	defer lock.Unlock()
	r := &restorer{e: e, m: m, dir: dir, progress: opts.Progress,
		nsDir: filenames.NamespaceState(e.opts.StateRoot, e.opts.Namespace)}
	copyOf := m.NamespaceDir != r.nsDir
	vms, check, err := r.specs(copyOf)
	if err != nil {
		return nil, err
	}
	sup, err := e.connect(ctx, opts.OwnerPID)
	if err != nil {
		return nil, err
	}
	if err := sup.CheckRestore(ctx, check); err != nil {
		return nil, fmt.Errorf("restore snapshot %q: %w", name, err)
	}
	if err := r.clear(ctx, sup); err != nil {
		return nil, err
	}
	if err := r.restore(ctx, sup, vms, copyOf); err != nil {
		return nil, err
	}
	return describe(dir, m), nil
}

// restorer carries out one restore.
type restorer struct {
	e        *Engine
	m        *manifest
	dir      string // the snapshot's
	nsDir    string // the namespace's state directory
	progress func(Event)
}

func (r *restorer) emit(address string, phase Phase, msg string) {
	if r.progress != nil {
		r.progress(Event{Time: time.Now(), Address: address, Phase: phase, Message: msg})
	}
}

// specs are the VMs to restore into this namespace, and the same VMs with
// their files in the snapshot, for a check that changes nothing. A copy
// (another namespace's snapshot) publishes its ports on free host ports.
func (r *restorer) specs(copyOf bool) (vms, check []api.RestoreVM, err error) {
	for _, sv := range r.m.Saved.VMs {
		spec := sv.Spec
		spec.Snapshot = filepath.Join(r.dir, filenames.SnapshotVMMs, spec.Name)
		spec.Instance = newInstance()
		if copyOf && len(spec.Publish) > 0 {
			spec.Publish = append([]api.Port(nil), spec.Publish...)
			for i := range spec.Publish {
				if spec.Publish[i].HostPort, err = freePort(spec.Publish[i].Protocol); err != nil {
					return nil, nil, fmt.Errorf("restore %s: %w", spec.Address, err)
				}
			}
		}
		ready := sv.Status.State == api.StateReady
		vms = append(vms, api.RestoreVM{Spec: mapPaths(spec, r.m.NamespaceDir, r.nsDir), Ready: ready})
		check = append(check, api.RestoreVM{Spec: mapPaths(spec, r.m.NamespaceDir, filepath.Join(r.dir, filenames.SnapshotFiles)), Ready: ready})
	}
	return vms, check, nil
}

// mapPaths moves a saved VM's paths in the saved namespace's directory to
// another directory.
func mapPaths(spec api.VMSpec, from, to string) api.VMSpec {
	move := func(p string) string {
		if rel, err := filepath.Rel(from, p); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
			return filepath.Join(to, rel)
		}
		return p
	}
	spec.StateDir = move(spec.StateDir)
	if spec.Root != nil {
		root := *spec.Root
		root.Path = move(root.Path)
		spec.Root = &root
	}
	spec.Disks = append([]api.Disk(nil), spec.Disks...)
	for i := range spec.Disks {
		spec.Disks[i].Path = move(spec.Disks[i].Path)
	}
	return spec
}

// freePort is a host port free now for protocol (tcp or udp).
func freePort(protocol string) (int, error) {
	if protocol == "udp" {
		c, err := net.ListenPacket("udp", ":0")
		if err != nil {
			return 0, err
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port, nil
	}
	l, err := net.Listen("tcp", ":0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// clear removes what runs in the namespace (its volumes stay).
func (r *restorer) clear(ctx context.Context, sup Supervisor) error {
	st, err := r.e.store.Read()
	if err != nil {
		return err
	}
	if err := sup.SetPools(ctx, nil); err != nil {
		return err
	}
	if st.Empty() {
		return nil
	}
	plan, err := planner.Make(planner.Input{State: st, Destroy: true})
	if err != nil {
		return err
	}
	a := r.e.newApplier(st, &stackfile.Stack{Namespace: r.e.opts.Namespace}, r.progress)
	// What runs is replaced, disks and all: no guest needs to shut down
	// cleanly, so none is waited for.
	a.stopTimeout = time.Millisecond
	if err := a.begin(ctx, sup); err != nil {
		return err
	}
	defer a.end()
	return a.apply(ctx, plan)
}

// restore puts the snapshot's files in place, records its state, starts
// its networks and restores its VMs.
func (r *restorer) restore(ctx context.Context, sup Supervisor, vms []api.RestoreVM, copyOf bool) error {
	files := map[string]bool{}
	for _, v := range r.m.Saved.VMs {
		for _, f := range v.Files {
			files[f] = true
		}
	}
	if _, err := os.Stat(filepath.Join(r.dir, filenames.SnapshotFiles, filenames.SSHClientKey)); err == nil {
		files[filenames.SSHClientKey] = true
	}
	r.emit("", PhaseDisks, fmt.Sprintf("copying %d files from snapshot %q", len(files), r.m.Name))
	for rel := range files {
		dst := filepath.Join(r.nsDir, rel)
		if err := os.MkdirAll(filepath.Dir(dst), filenames.DirMode); err != nil {
			return err
		}
		if err := os.Remove(dst); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if err := fsutil.CopyFileSparse(dst, filepath.Join(r.dir, filenames.SnapshotFiles, rel)); err != nil {
			return fmt.Errorf("restore snapshot %q: %w", r.m.Name, err)
		}
	}

	cur, err := r.e.store.Read()
	if err != nil {
		return err
	}
	st := cloneState(r.m.State)
	st.Serial, st.Lineage = cur.Serial, cur.Lineage
	for _, v := range st.VMs {
		v.Status, v.Process, v.ExitCode, v.Reason = state.StatusCreating, nil, nil, ""
	}
	if err := r.e.store.Write(st); err != nil {
		return err
	}
	for _, n := range r.m.Saved.Networks {
		if err := sup.EnsureNetwork(ctx, n); err != nil {
			return fmt.Errorf("restore snapshot %q: %w", r.m.Name, err)
		}
	}
	started, err := sup.RestoreVMs(ctx, vms)
	if err != nil {
		for _, v := range st.VMs {
			v.Status, v.Reason = state.StatusFailed, "restore from snapshot failed: "+err.Error()
		}
		r.e.store.Write(st)
		return fmt.Errorf("restore snapshot %q: %w", r.m.Name, err)
	}
	now := time.Now().UTC()
	for i, s := range started {
		v := st.VMs[vms[i].Spec.Address]
		if v == nil {
			continue
		}
		p := s.Process
		v.Process = &state.Process{Driver: p.Driver, PID: p.PID, StartTime: p.StartTime, RunDir: p.RunDir}
		v.Status, v.StartedAt = state.StatusBooting, now
		if vms[i].Ready {
			v.Status = state.StatusReady
		}
	}
	if err := r.e.store.Write(st); err != nil {
		return err
	}
	what := "restored"
	if copyOf {
		what = "restored as a copy of namespace " + r.m.Namespace + "'s"
	}
	r.emit("", PhaseDone, fmt.Sprintf("%s snapshot %q: %d VMs", what, r.m.Name, len(started)))
	return nil
}

// cloneState copies a state through its JSON form (it is all values).
func cloneState(st *state.State) *state.State {
	b, err := json.Marshal(st)
	if err != nil {
		panic("engine: encode state: " + err.Error()) // typed values only
	}
	out := state.New(st.Namespace)
	if err := json.Unmarshal(b, out); err != nil {
		panic("engine: decode state: " + err.Error())
	}
	return out
}
