package engine

import (
	"path/filepath"

	"github.com/stackvm/stack/cloudinit"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/internal/sshkeys"
)

// execKeys adds exec's SSH keys to a cloud-init VM's seed input: the
// namespace's client key (installed for root) and the VM's host key (which
// the supervisor pins when it connects). Both are made on first use and
// kept, so that the seed, and its instance-id, stay the same across runs;
// the host key lives in the VM's state directory and goes with it.
func (e *Engine) execKeys(in *cloudinit.Input, vmDir string) error {
	client, err := sshkeys.Ensure(filepath.Join(filenames.NamespaceState(e.opts.StateRoot, e.opts.Namespace), filenames.SSHClientKey))
	if err != nil {
		return err
	}
	host, err := sshkeys.Ensure(filepath.Join(vmDir, filenames.SSHHostKey))
	if err != nil {
		return err
	}
	in.ExecKey = client.AuthorizedKey("stack-exec@" + e.opts.Namespace)
	in.HostKey = &cloudinit.HostKey{Private: string(host.PEM), Public: host.AuthorizedKey("")}
	return nil
}
