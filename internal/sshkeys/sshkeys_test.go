package sshkeys

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/crypto/ssh"
)

// A key is generated once, 0600, and read back unchanged afterwards.
func TestEnsureKeepsTheKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "key")
	k1, err := Ensure(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v", fi.Mode().Perm())
	}
	if di, _ := os.Stat(filepath.Dir(path)); di.Mode().Perm() != 0o700 {
		t.Fatalf("key dir mode %v", di.Mode().Perm())
	}
	if k1.Signer.PublicKey().Type() != ssh.KeyAlgoED25519 || !strings.HasPrefix(string(k1.PEM), "-----BEGIN OPENSSH PRIVATE KEY-----") {
		t.Fatalf("key %s:\n%s", k1.Signer.PublicKey().Type(), k1.PEM)
	}
	k2, err := Ensure(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(k1.PEM) != string(k2.PEM) || k1.AuthorizedKey("c") != k2.AuthorizedKey("c") {
		t.Fatal("a second Ensure made another key")
	}
	line := k1.AuthorizedKey("stack-exec@ns")
	pub, comment, _, rest, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil || comment != "stack-exec@ns" || len(rest) != 0 || string(pub.Marshal()) != string(k1.Signer.PublicKey().Marshal()) {
		t.Fatalf("authorized key %q: %v", line, err)
	}
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 1 {
		t.Fatalf("temporary files left: %v", ents)
	}
}

// Concurrent first calls agree on one key.
func TestEnsureConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "key")
	var wg sync.WaitGroup
	keys := make([]string, 8)
	for i := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k, err := Ensure(path)
			if err != nil {
				t.Error(err)
				return
			}
			keys[i] = k.AuthorizedKey("")
		}()
	}
	wg.Wait()
	for _, k := range keys[1:] {
		if k != keys[0] {
			t.Fatalf("callers got different keys: %q", keys)
		}
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Load(filepath.Join(dir, "none")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing key: %v", err)
	}
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("not a key"), 0o600)
	if _, err := Load(bad); err == nil {
		t.Fatal("no error for a file that is not a key")
	}
	if _, err := Ensure(bad); err == nil {
		t.Fatal("Ensure replaced or accepted a file that is not a key")
	}
}
