package supervisor

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/stackvm/stack/guestproto"
	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/internal/fsutil"
	"github.com/stackvm/stack/supervisor/api"
)

// Snapshots (save-snapshot, check-restore, restore-vms). A save pauses
// every VM of the namespace together, so that VMs that talk to each other
// are saved at one moment; saves each VMM (devices and memory) and copies
// the namespace's files that the VMs use (disks, keys, volumes) while the
// VMs are paused, so that the disks are exactly those of that moment; and
// lets the VMs go on. Only then are the VMM saves made quick to restore
// (hypervisor.Driver.Flatten). A restore starts every VM from its save,
// paused, and lets them all go on at one moment.

// saveTarget is one VM as a save takes it.
type saveTarget struct {
	v     *vmRun
	inst  hypervisor.Instance
	spec  api.VMSpec
	st    api.VMStatus
	files []string // relative to the namespace's state directory
}

// saveSnapshot saves every VM of the namespace into dir (see api.Saved).
func (s *Supervisor) saveSnapshot(ctx context.Context, dir string) (*api.Saved, error) {
	targets, err := s.saveTargets()
	if err != nil {
		return nil, err
	}
	nsDir := filenames.NamespaceState(s.opts.StateRoot, s.opts.Namespace)
	saved := &api.Saved{}
	files := map[string]bool{}
	for _, t := range targets {
		saved.VMs = append(saved.VMs, api.SavedVM{Spec: t.spec, Status: t.st, Files: t.files})
		for _, f := range t.files {
			files[f] = true
		}
	}
	if _, err := os.Stat(filepath.Join(nsDir, filenames.SSHClientKey)); err == nil {
		files[filenames.SSHClientKey] = true
	}
	for _, n := range s.networks() {
		saved.Networks = append(saved.Networks, n.current())
	}
	sort.Slice(saved.Networks, func(i, j int) bool { return saved.Networks[i].Name < saved.Networks[j].Name })

	// The VMs go on whatever becomes of the save: resuming does not heed
	// the client, which may have hung up.
	t0 := time.Now()
	paused := make([]hypervisor.Instance, 0, len(targets))
	defer func() {
		if len(paused) > 0 {
			s.resumeAll(context.WithoutCancel(ctx), paused)
		}
	}()
	// Pausing is not cut short by ctx either: a stop whose reply was not
	// waited for may have paused the VM all the same. A VM is resumed
	// whenever its pause was asked for.
	var mu sync.Mutex
	err = eachParallel(targets, func(t saveTarget) error {
		mu.Lock()
		paused = append(paused, t.inst)
		mu.Unlock()
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if err := t.inst.Pause(pctx); err != nil {
			return fmt.Errorf("pause %s: %w", t.spec.Address, err)
		}
		return nil
	})
	if err == nil {
		err = ctx.Err()
	}
	if err == nil {
		err = eachParallel(targets, func(t saveTarget) error {
			vmm := filepath.Join(dir, filenames.SnapshotVMMs, t.spec.Name)
			if err := os.MkdirAll(vmm, filenames.DirMode); err != nil {
				return err
			}
			if _, err := t.inst.Save(ctx, vmm); err != nil {
				return fmt.Errorf("save %s: %w", t.spec.Address, err)
			}
			return nil
		})
	}
	if err == nil {
		// The VMMs' saves flushed their disks (a migration's end does).
		err = eachParallel(sortedKeys(files), func(rel string) error {
			return copyInto(filepath.Join(dir, filenames.SnapshotFiles), nsDir, rel)
		})
	}
	s.resumeAll(context.WithoutCancel(ctx), paused)
	paused = nil
	saved.Paused = api.Duration(time.Since(t0))
	for _, t := range targets {
		go s.tellResumed(context.WithoutCancel(ctx), t.v, t.inst)
	}
	if err != nil {
		s.log.Warn("save snapshot failed; the VMs run on", "err", err, "paused", time.Since(t0))
		return nil, fmt.Errorf("save snapshot: %w", err)
	}
	s.log.Info("saved the namespace's VMs", "vms", len(targets), "paused", time.Since(t0))

	t1 := time.Now()
	err = eachParallel(targets, func(t saveTarget) error {
		if err := s.opts.Driver.Flatten(ctx, filepath.Join(dir, filenames.SnapshotVMMs, t.spec.Name)); err != nil {
			return fmt.Errorf("save %s: %w", t.spec.Address, err)
		}
		return nil
	})
	saved.Flattened = api.Duration(time.Since(t1))
	if err != nil {
		return nil, fmt.Errorf("save snapshot: %w", err)
	}
	return saved, nil
}

// saveTargets are the namespace's VMs, by address, if every one can be
// saved now: running and ready, and without shared directories (QEMU
// cannot save a VM that a virtiofsd or 9p export serves).
func (s *Supervisor) saveTargets() ([]saveTarget, error) {
	nsDir := filenames.NamespaceState(s.opts.StateRoot, s.opts.Namespace)
	var targets []saveTarget
	var problems []string
	for _, v := range s.allVMs() {
		v.mu.Lock()
		t := saveTarget{v: v, inst: v.inst, spec: v.spec, st: v.st}
		stopping := v.stopping
		v.mu.Unlock()
		switch {
		case len(t.spec.Shares) > 0:
			problems = append(problems, fmt.Sprintf("%s has shared directories, which QEMU cannot save", t.spec.Address))
		case t.st.State != api.StateReady || t.inst == nil || stopping:
			problems = append(problems, fmt.Sprintf("%s is %s, not ready: save a namespace whose VMs all run and are ready (start or remove the others)", t.spec.Address, t.st.State))
		default:
			files, err := vmFiles(nsDir, &t.spec)
			if err != nil {
				return nil, err
			}
			t.files = files
			targets = append(targets, t)
		}
	}
	if len(problems) > 0 {
		sort.Strings(problems)
		return nil, fmt.Errorf("cannot save the namespace: %s", strings.Join(problems, "; "))
	}
	if len(targets) == 0 {
		return nil, errors.New("cannot save the namespace: it has no VMs")
	}
	sort.Slice(targets, func(i, j int) bool { return targets[i].spec.Address < targets[j].spec.Address })
	return targets, nil
}

// vmFiles are the files of a VM that a snapshot keeps, relative to the
// namespace's state directory: everything in its state directory but its
// console logs and record, and its disks (volumes live elsewhere).
func vmFiles(nsDir string, spec *api.VMSpec) ([]string, error) {
	skip := map[string]bool{filenames.ConsoleLog: true, filenames.ConsoleLogOld: true, filenames.VMRecord: true}
	var out []string
	ents, err := os.ReadDir(spec.StateDir)
	if err != nil {
		return nil, fmt.Errorf("save %s: %w", spec.Address, err)
	}
	for _, e := range ents {
		if e.Type().IsRegular() && !skip[e.Name()] {
			out = append(out, filepath.Join(spec.StateDir, e.Name()))
		}
	}
	disks := slices.Clone(spec.Disks)
	if spec.Root != nil {
		disks = append(disks, *spec.Root)
	}
	for _, d := range disks {
		if !slices.Contains(out, d.Path) {
			out = append(out, d.Path)
		}
	}
	for i, p := range out {
		rel, err := filepath.Rel(nsDir, p)
		if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
			return nil, fmt.Errorf("save %s: its file %s is outside the namespace's state directory", spec.Address, p)
		}
		out[i] = rel
	}
	sort.Strings(out)
	return out, nil
}

// copyInto copies the file rel of dir from into dir to, keeping its holes.
func copyInto(to, from, rel string) error {
	dst := filepath.Join(to, rel)
	if err := os.MkdirAll(filepath.Dir(dst), filenames.DirMode); err != nil {
		return err
	}
	if err := fsutil.CopyFileSparse(dst, filepath.Join(from, rel)); err != nil {
		return fmt.Errorf("copy %s: %w", rel, err)
	}
	return nil
}

// resumeAll lets paused VMMs run, as close to one moment as it can, and
// gives their guests the host's clock (they lost the time they were
// paused) and fresh entropy.
func (s *Supervisor) resumeAll(ctx context.Context, insts []hypervisor.Instance) {
	eachParallel(insts, func(inst hypervisor.Instance) error {
		if err := inst.Resume(ctx); err != nil {
			s.log.Error("resume a VM after a snapshot", "pid", inst.Identity().PID, "err", err)
		}
		return nil
	})
}

// tellResumed sends a guest that runs again after a save or a restore the
// host's clock and entropy: over the agent channel (initramfs mode), or by
// setting its clock over SSH in the background (cloud-init mode: seconds
// under TCG).
func (s *Supervisor) tellResumed(ctx context.Context, v *vmRun, inst hypervisor.Instance) {
	if g := inst.Guest(); g != nil {
		var entropy [32]byte
		rand.Read(entropy[:])
		body, _ := json.Marshal(guestproto.Resumed{Time: time.Now().UnixNano(), Entropy: entropy[:]})
		msg, _ := json.Marshal(guestproto.Message{Type: guestproto.TypeResumed, Body: body})
		if err := g.Send(ctx, msg); err != nil {
			s.log.Warn("tell a resumed guest the time", "vm", v.spec.Address, "err", err)
		}
		return
	}
	// An SSH login into a guest under TCG takes seconds: the VM does not
	// wait for it to count as ready.
	go func() {
		t0 := time.Now()
		if err := s.setClockSSH(context.WithoutCancel(ctx), v); err != nil {
			s.log.Warn("set a resumed guest's clock over SSH", "vm", v.spec.Address, "err", err)
			return
		}
		s.log.Info("stepped a resumed guest's clock over SSH", "vm", v.spec.Address, "took", time.Since(t0))
	}()
}

// setClockSSH steps a cloud-init guest's clock to the host's.
func (s *Supervisor) setClockSSH(ctx context.Context, v *vmRun) error {
	c, err := s.dialSSH(ctx, v)
	if err != nil {
		return err
	}
	defer c.Close()
	sess, err := c.NewSession()
	if err != nil {
		return err
	}
	defer sess.Close()
	now := time.Now()
	return sess.Run(fmt.Sprintf("date -u -s @%d.%09d >/dev/null", now.Unix(), now.Nanosecond()))
}

// restoreRun is a VM that restore-vms starts.
type restoreRun struct {
	v     *vmRun
	ready bool
	inst  hypervisor.Instance
}

// newRestoreRun is the run of a VM to restore, not yet wired or started.
func (s *Supervisor) newRestoreRun(r api.RestoreVM) *restoreRun {
	v := &vmRun{s: s, spec: r.Spec, runDir: filenames.VMRuntime(s.opts.RuntimeRoot, s.opts.Namespace, r.Spec.Name),
		st: api.VMStatus{Address: r.Spec.Address, Name: r.Spec.Name, State: api.StateCreating}}
	return &restoreRun{v: v, ready: r.Ready}
}

// checkRestore reports whether every VM of vms would start from its save.
func (s *Supervisor) checkRestore(ctx context.Context, vms []api.RestoreVM) error {
	if len(vms) == 0 {
		return errors.New("restore: no VMs")
	}
	return eachParallel(vms, func(r api.RestoreVM) error {
		if r.Spec.Snapshot == "" {
			return fmt.Errorf("restore %s: no save", r.Spec.Address)
		}
		run := s.newRestoreRun(r)
		// The NICs as wire will make them: their sockets are not part of
		// what a save depends on.
		for i := range r.Spec.NICs {
			p := filepath.Join(run.v.runDir, filenames.NICSocket(i))
			run.v.nics = append(run.v.nics, hypervisor.NIC{MAC: r.Spec.NICs[i].MAC, DgramLocal: p, DgramRemote: p})
		}
		cfg := run.v.config()
		if err := s.opts.Driver.CheckSnapshot(ctx, &cfg); err != nil {
			return fmt.Errorf("restore %s: %w", r.Spec.Address, err)
		}
		return nil
	})
}

// restoreVMs starts every VM of vms from its save, paused, then lets them
// all run at one moment: a VM that was ready when saved is ready at once.
// When one cannot be started, none is kept.
func (s *Supervisor) restoreVMs(ctx context.Context, vms []api.RestoreVM) ([]api.Started, error) {
	if err := s.checkRestore(ctx, vms); err != nil {
		return nil, err
	}
	runs := make([]*restoreRun, len(vms))
	for i, r := range vms {
		if s.vm(r.Spec.Address) != nil {
			return nil, fmt.Errorf("restore %s: the namespace has that VM already", r.Spec.Address)
		}
		runs[i] = s.newRestoreRun(r)
	}
	err := eachParallel(runs, func(r *restoreRun) error { return s.startRestored(ctx, r) })
	if err != nil {
		for _, r := range runs {
			s.dropRestored(r)
		}
		return nil, err
	}
	insts := make([]hypervisor.Instance, len(runs))
	for i, r := range runs {
		insts[i] = r.inst
	}
	s.resumeAll(ctx, insts)
	out := make([]api.Started, len(runs))
	eachParallel(runs, func(r *restoreRun) error {
		v := r.v
		v.mu.Lock()
		v.st.State, v.st.Reason, v.st.ExitCode = api.StateBooting, "", nil
		if r.ready {
			v.st.State = api.StateReady
		}
		v.mu.Unlock()
		s.adopt(v, r.inst, adoptRestored)
		b := r.inst.Boot()
		s.emitVM(v, api.PhaseBooting, fmt.Sprintf("VMM restored from the snapshot in %s (pid %d)", b.Took.Round(time.Millisecond), r.inst.Identity().PID))
		if r.ready {
			s.emitVM(v, api.PhaseReady, "ready (restored from the snapshot)")
		}
		s.tellResumed(ctx, v, r.inst)
		return nil
	})
	for i, r := range runs {
		st, _ := started(r.inst)
		out[i] = *st
	}
	return out, nil
}

// startRestored wires r's VM and starts its VMM from its save, paused.
func (s *Supervisor) startRestored(ctx context.Context, r *restoreRun) error {
	v := r.v
	for _, dir := range []string{v.runDir, v.spec.StateDir} {
		if err := os.MkdirAll(dir, filenames.DirMode); err != nil {
			return fmt.Errorf("restore %s: %w", v.spec.Address, err)
		}
	}
	if err := s.wire(v); err != nil {
		return fmt.Errorf("restore %s: %w", v.spec.Address, err)
	}
	s.mu.Lock()
	s.vms[v.spec.Address] = v
	s.booting[v.runDir] = v // BeforeBoot connects the console relay
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.booting, v.runDir)
		s.mu.Unlock()
	}()
	loopCtx, cancel := context.WithCancel(context.Background())
	v.mu.Lock()
	v.loopCtx, v.cancel = loopCtx, cancel
	if fi, err := os.Stat(consoleLogPath(&v.spec)); err == nil {
		v.logStart = fi.Size()
	}
	v.mu.Unlock()
	s.emitVM(v, api.PhaseVMMStart, "restoring the VMM from the snapshot")
	cfg := v.config()
	inst, err := s.opts.Driver.Start(ctx, &cfg)
	if err != nil {
		return fmt.Errorf("restore %s: %w", v.spec.Address, err)
	}
	r.inst = inst
	// Restarts boot the VM: the save was this VMM's start alone.
	v.mu.Lock()
	v.spec.Snapshot = ""
	v.mu.Unlock()
	return nil
}

// dropRestored undoes what startRestored did for a restore that failed.
func (s *Supervisor) dropRestored(r *restoreRun) {
	v := r.v
	if r.inst != nil {
		r.inst.Kill()
		r.inst.Wait(context.Background())
		r.inst.Close()
	}
	v.mu.Lock()
	relay, cancel := v.relay, v.cancel
	v.mu.Unlock()
	if relay != nil {
		relay.Close()
	}
	if cancel != nil {
		cancel()
	}
	s.mu.Lock()
	if s.vms[v.spec.Address] == v {
		delete(s.vms, v.spec.Address)
	}
	s.mu.Unlock()
	s.unwire(v)
	os.Remove(recordPath(&v.spec))
	os.RemoveAll(v.runDir)
}

// eachParallel runs f on every item at once and joins the errors.
func eachParallel[T any](items []T, f func(T) error) error {
	errs := make([]error, len(items))
	var wg sync.WaitGroup
	for i, it := range items {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f(it)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
