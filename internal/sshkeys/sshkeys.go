// Package sshkeys makes and reads the ed25519 keys of exec over SSH into
// cloud-init VMs: one client key per namespace (its public half installed
// for root through every VM's seed) and one host key per VM (put in the
// VM's seed, so that exec knows it before the guest boots and pins it).
// Keys are generated once and kept, mode 0600, in OpenSSH's PEM format:
// the seeds that carry them, and so their instance-ids, stay the same from
// one run to the next.
package sshkeys

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/stackvm/stack/internal/filenames"
)

// Key is a private key as stored.
type Key struct {
	Signer ssh.Signer
	// PEM is the file's content (OpenSSH private key format, which sshd
	// needs for an ed25519 host key).
	PEM []byte
}

// AuthorizedKey is the public key as one authorized_keys line (no newline),
// with comment appended when not empty.
func (k *Key) AuthorizedKey(comment string) string {
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k.Signer.PublicKey())))
	if comment != "" {
		line += " " + comment
	}
	return line
}

// Ensure returns the key at path, generating it first when the file does
// not exist. Concurrent callers (the engine prepares VMs in parallel, and
// they share the namespace's client key) all get the same key: a new key
// is written to a temporary file and hard-linked into place, which fails
// for every caller but the first, and those read the winner's key.
func Ensure(path string) (*Key, error) {
	k, err := Load(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return k, err
	}
	if err := os.MkdirAll(filepath.Dir(path), filenames.DirMode); err != nil {
		return nil, fmt.Errorf("create ssh key directory: %w", err)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate ssh key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		return nil, fmt.Errorf("encode ssh key: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return nil, fmt.Errorf("write ssh key: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.Write(pem.EncodeToMemory(block))
	if err := errors.Join(werr, tmp.Chmod(filenames.FileMode), tmp.Sync(), tmp.Close()); err != nil {
		return nil, fmt.Errorf("write ssh key %s: %w", path, err)
	}
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("write ssh key %s: %w", path, err)
	}
	return Load(path)
}

// Load reads a key that Ensure wrote. A missing file gives an error that
// matches fs.ErrNotExist.
func Load(path string) (*Key, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read ssh key: %w", err)
	}
	s, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("read ssh key %s: %w", path, err)
	}
	return &Key{Signer: s, PEM: b}, nil
}
