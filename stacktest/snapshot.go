package stacktest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/stackvm/stack"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/internal/fsutil"
)

// upFromSnapshot restores the stack's fixture snapshot into the test's
// namespace, or boots the stack, prepares it and saves the fixture when
// there is none (or it no longer restores). One process at a time makes a
// fixture: the others wait for it, then restore it.
func (s *Stack) upFromSnapshot(ctx context.Context, cfg *config) {
	s.t.Helper()
	key, err := fixtureKey(s.Project, cfg)
	if err != nil {
		s.t.Fatalf("stacktest: snapshot key: %v", err)
	}
	dir := filepath.Join(filenames.CacheRoot(), "fixtures", key)
	lock, err := fsutil.LockFile(ctx, dir+".lock", nil)
	if err != nil {
		s.t.Fatalf("stacktest: lock the fixture: %v", err)
	}
	defer lock.Unlock()
	if _, err := os.Stat(dir); err == nil {
		start := time.Now()
		_, err := s.Project.RestoreSnapshot(ctx, "fixture", stack.RestoreOptions{Dir: dir, Key: key, OwnerPID: os.Getpid()})
		if err == nil {
			s.t.Logf("stacktest: namespace %s restored from its snapshot in %s", s.Project.Stack.Namespace, time.Since(start).Round(time.Millisecond))
			s.refresh()
			return
		}
		// The snapshot no longer restores here (or is damaged): it is
		// made again.
		s.t.Logf("stacktest: the fixture snapshot does not restore (%v); booting the stack and saving it again", err)
		os.RemoveAll(dir)
		if err := s.Project.Down(ctx, stack.DownOptions{Volumes: true}); err != nil {
			s.t.Fatalf("stacktest: down after a failed restore: %v", err)
		}
	}
	s.up(ctx)
	for _, prepare := range cfg.prepare {
		prepare(s)
	}
	start := time.Now()
	if _, err := s.Project.SaveSnapshot(ctx, "fixture", stack.SnapshotOptions{Key: key, Dir: dir}); err != nil {
		s.t.Fatalf("stacktest: save the fixture snapshot: %v", err)
	}
	s.t.Logf("stacktest: saved the fixture snapshot in %s", time.Since(start).Round(time.Millisecond))
	s.refresh()
}

// fixtureKey names what a fixture snapshot holds: the stack files'
// contents, the variables, and the test binary (stack's code and the
// prepare functions' alike).
func fixtureKey(p *stack.Project, cfg *config) (string, error) {
	exe, err := executableHash()
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "stacktest-fixture 1\x00%s\x00", exe)
	for _, f := range p.Stack.Files {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s\x00%d\x00", filepath.Base(f), len(b))
		h.Write(b)
	}
	for _, v := range cfg.vars {
		fmt.Fprintf(h, "var %s\x00", v)
	}
	return hex.EncodeToString(h.Sum(nil)[:16]), nil
}

var exeHash struct {
	once sync.Once
	sum  string
	err  error
}

// executableHash is the SHA-256 of the running binary, once per process.
func executableHash() (string, error) {
	exeHash.once.Do(func() {
		path, err := os.Executable()
		if err != nil {
			exeHash.err = err
			return
		}
		f, err := os.Open(path)
		if err != nil {
			exeHash.err = err
			return
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			exeHash.err = err
			return
		}
		exeHash.sum = hex.EncodeToString(h.Sum(nil))
	})
	if exeHash.err != nil {
		return "", errors.Join(errors.New("hash the test binary"), exeHash.err)
	}
	return exeHash.sum, nil
}
