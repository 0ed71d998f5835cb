package app

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// cloudInitLocaleStack is one Debian VM whose seed asks for a locale the
// image does not have: its /etc/locale.gen enables none, so locale-gen
// makes nothing and update-locale refuses en_US.UTF-8, and cloud-init's
// locale module fails as it does in a minimal image without the locales
// package (there locale-gen is missing). The rest of the seed is applied
// all the same, and runcmd says so on the console. The ready timeout is
// for a loaded 2-CPU machine under TCG, where the boot took over 10 minutes.
const cloudInitLocaleStack = `variable "image" {
  type = string
}

variable "strict" {
  type = bool
}

variable "subnet" {
  type = string
}

network "lan" {
  subnet = var.subnet
}

vm "debian" {
  kernel    = "${var.image}/vmlinuz"
  initramfs = "${var.image}/initrd.img"
  root_disk = "${var.image}/debian-12.raw"
  memory_mb = 512
  network "lan" {}
  cloud_init {
    strict    = var.strict
    user_data = "#cloud-config\n${yamlencode({
      locale      = "en_US.UTF-8"
      write_files = [{ path = "/run/written", content = "from-write-files" }]
      runcmd      = [["sh", "-c", "echo \"CHECK-SEED host=$(hostname) file=$(cat /run/written)\" > /dev/ttyS0"]]
    })}"
  }
  ready {
    timeout = "25m"
  }
}
`

var reportLine = regexp.MustCompile(`STACK-REPORT \S+ (\{.*\})`)

// TestCloudInitModuleFailure boots the stack above twice at once, in two
// namespaces: without strict, up succeeds with a warning naming locale (in
// its output, ps and ps --json) and the seed was applied; with strict, up
// fails naming locale.
func TestCloudInitModuleFailure(t *testing.T) {
	requireVMs(t)
	image := debianImageDir(t)
	file := filepath.Join(t.TempDir(), "stack.hcl")
	writeFile(t, file, cloudInitLocaleStack)
	lax := newCLI(t, fmt.Sprintf("cil-%d", os.Getpid()))
	strict := newCLI(t, fmt.Sprintf("cis-%d", os.Getpid()))
	up := func(c *cli, isStrict bool, subnet string) result {
		return c.run("-f", file, "--var", "image="+image, "--var", fmt.Sprintf("strict=%v", isStrict),
			"--var", "subnet="+subnet, "up", "--progress", "plain")
	}
	var laxUp, strictUp result
	var wg sync.WaitGroup
	wg.Add(2)
	start := time.Now()
	go func() { defer wg.Done(); laxUp = up(lax, false, "10.72.0.0/24") }()
	go func() { defer wg.Done(); strictUp = up(strict, true, "10.73.0.0/24") }()
	wg.Wait()
	t.Logf("both ups done in %s", time.Since(start).Round(time.Second))

	// Without strict: ready, and the warning names the module and its error.
	if laxUp.code != 0 {
		t.Fatalf("up without strict: exit %d\n%s", laxUp.code, laxUp.stderr)
	}
	warned := regexp.MustCompile(`vm\.debian\s+warning\s+cloud-init module locale failed: \S`)
	if !warned.MatchString(laxUp.stderr) {
		t.Fatalf("up's output has no warning about locale:\n%s", laxUp.stderr)
	}
	ps := lax.ps()["debian"]
	if ps.State != "ready" || len(ps.Warnings) != 1 || !strings.HasPrefix(ps.Warnings[0], "cloud-init module locale failed: ") {
		t.Fatalf("ps --json: %+v", ps)
	}
	if r := lax.mustRun("ps"); !strings.Contains(r.stdout, "warning: debian: cloud-init module locale failed: ") {
		t.Fatalf("ps:\n%s", r.stdout)
	}
	logs := lax.mustRun("logs", "debian").stdout
	if !strings.Contains(logs, "CHECK-SEED host=debian file=from-write-files") {
		t.Fatalf("the seed was not applied (hostname, write_files, runcmd); console:\n%s", tail(logs, 4000))
	}
	if m := reportLine.FindStringSubmatch(logs); m != nil {
		t.Logf("the guest's report: %s", m[1]) // testdata/locale-debian12.json came from here
	}

	// With strict: up fails, naming the module.
	if strictUp.code == 0 || !strings.Contains(strictUp.stderr, "cloud-init module locale failed") ||
		!strings.Contains(strictUp.stderr, "cloud_init strict") {
		t.Fatalf("up with strict: exit %d\n%s", strictUp.code, strictUp.stderr)
	}
	if ps := strict.ps()["debian"]; ps.State != "failed" || !strings.Contains(ps.Reason, "locale") || len(ps.Warnings) != 0 {
		t.Fatalf("ps --json with strict: %+v", ps)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
