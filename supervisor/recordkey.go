package supervisor

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/internal/fsutil"
)

// The record key encrypts the guest configuration of a VM whose
// configuration holds sensitive values (api.Record.SealedGuestConfig). It
// is 32 random bytes in the namespace's runtime directory, which is not the
// state directory: a copy of the state directory (a backup, an archive
// attached to a bug report) does not carry the secrets. Where the runtime
// directory is a tmpfs, a reboot loses the key along with the VMs it
// served; re-created VMs get a new one. `down` removes it.
func (s *Supervisor) recordKey() ([]byte, error) {
	s.keyOnce.Do(func() {
		path := filepath.Join(filenames.NamespaceRuntime(s.opts.RuntimeRoot, s.opts.Namespace), filenames.RecordKey)
		s.key, s.keyErr = os.ReadFile(path)
		if errors.Is(s.keyErr, os.ErrNotExist) {
			key := make([]byte, 32)
			if _, err := rand.Read(key); err != nil {
				s.keyErr = fmt.Errorf("make record key: %w", err)
				return
			}
			s.key, s.keyErr = key, fsutil.WriteFileAtomic(path, key)
		}
		if s.keyErr == nil && len(s.key) != 32 {
			s.keyErr = fmt.Errorf("record key %s: %d bytes, want 32", path, len(s.key))
		}
	})
	return s.key, s.keyErr
}

func (s *Supervisor) recordAEAD() (cipher.AEAD, error) {
	key, err := s.recordKey()
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("record key: %w", err)
	}
	return cipher.NewGCM(block)
}

// sealConfig encrypts a guest configuration for a VM record.
func (s *Supervisor) sealConfig(cfg []byte) ([]byte, error) {
	aead, err := s.recordAEAD()
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(cfg)+aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("seal guest config: %w", err)
	}
	return aead.Seal(nonce, nonce, cfg, nil), nil
}

// openConfig decrypts what sealConfig made.
func (s *Supervisor) openConfig(sealed []byte) ([]byte, error) {
	aead, err := s.recordAEAD()
	if err != nil {
		return nil, err
	}
	if len(sealed) < aead.NonceSize() {
		return nil, errors.New("open guest config: too short")
	}
	cfg, err := aead.Open(nil, sealed[:aead.NonceSize()], sealed[aead.NonceSize():], nil)
	if err != nil {
		return nil, fmt.Errorf("open guest config: %w", err)
	}
	return cfg, nil
}
