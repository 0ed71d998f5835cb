package engine

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/internal/fsutil"
	"github.com/stackvm/stack/stackfile"
	"github.com/stackvm/stack/supervisor/api"
)

// secretsTag is the share tag of a VM's secrets. A shared_dir's name is a
// DNS label, which has no '_', so it cannot take this tag.
const secretsTag = "stack_secrets"

// stageSecrets copies a VM's secret files into its directory under the
// namespace's runtime directory (never its state directory) and returns
// the read-only share the guest mounts at /run/secrets. Only that
// directory is shared, not the files' own directories, whose other files
// the guest must not see. A file whose content no longer has the digest
// the plan was made with is refused: the plan recorded that digest.
func (a *applier) stageSecrets(vm *stackfile.VM) (api.Share, error) {
	dir := filenames.VMSecrets(a.e.opts.RuntimeRoot, a.e.opts.Namespace, vm.Name)
	if err := os.RemoveAll(dir); err != nil {
		return api.Share{}, fmt.Errorf("stage secrets of %s: %w", vm.Address, err)
	}
	if err := os.MkdirAll(dir, filenames.DirMode); err != nil {
		return api.Share{}, fmt.Errorf("stage secrets of %s: %w", vm.Address, err)
	}
	for _, s := range vm.Secrets {
		data, err := os.ReadFile(s.HostPath)
		if err != nil {
			return api.Share{}, fmt.Errorf("stage secret %s of %s: %w", s.Name, vm.Address, err)
		}
		if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != s.Digest {
			return api.Share{}, fmt.Errorf("stage secret %s of %s: %s changed since the stack files were loaded; run the command again", s.Name, vm.Address, s.HostPath)
		}
		if err := fsutil.WriteFileAtomic(filepath.Join(dir, s.Name), data); err != nil {
			return api.Share{}, fmt.Errorf("stage secret %s of %s: %w", s.Name, vm.Address, err)
		}
	}
	return api.Share{Tag: secretsTag, HostPath: dir, ReadOnly: true}, nil
}
