package guestimage

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/u-root/u-root/pkg/cpio"

	"github.com/stackvm/stack/guestproto"
	"github.com/stackvm/stack/internal/netaddr"
)

// Boot benchmarks. They boot real VMs (TCG), so they are slow; run them
// explicitly:
//
//	go test -run XXX -bench Boot -benchtime 5x ./guestimage/
//
// Numbers are reported as milliseconds per boot and as ratios against a
// baseline booted in the same run, interleaved, so that the machine's load
// affects both alike.

const benchMAC = "52:54:00:12:34:56"

func benchSpec(initrd string) vmSpec {
	return vmSpec{
		initramfs: initrd,
		nicMACs:   []string{benchMAC},
		cmdline:   os.Getenv("STACK_BENCH_CMDLINE"),
		cfg: guestproto.Config{
			Hostname: "bench",
			NICs:     []guestproto.NIC{{MAC: netaddr.MustParseMAC(benchMAC), Address: netip.MustParsePrefix("10.42.0.2/24"), Gateway: netip.MustParseAddr("10.42.0.1")}},
		},
	}
}

// bootToReady boots the stack image and returns the time from starting
// QEMU to the guest's ready report on the agent port.
func bootToReady(b *testing.B, img *Image, initrd string) time.Duration {
	vm := bootVM(b, img, benchSpec(initrd))
	agent := vm.dialAgent(30 * time.Second)
	agent.until(b, bootTimeout, isReady)
	d := time.Since(vm.start)
	if os.Getenv("STACK_BENCH_CONSOLE") != "" {
		vm.waitConsole("msg=ready", 5*time.Second)
		vm.mu.Lock()
		b.Logf("agent ready after %v, console ready line after %v", d, vm.marks["init-ready"].Sub(vm.start))
		vm.mu.Unlock()
	}
	stopVM(vm)
	if testing.Verbose() && os.Getenv("STACK_BENCH_CONSOLE") != "" {
		b.Logf("console:\n%s", vm.consoleText())
	}
	return d
}

// bootToMark boots with initrd and returns the time from starting QEMU to
// the console line "MARK <mark>".
func bootToMark(b *testing.B, img *Image, initrd, mark string) time.Duration {
	vm := bootVM(b, img, benchSpec(initrd))
	deadline := time.Now().Add(bootTimeout)
	for {
		vm.mu.Lock()
		at, ok := vm.marks[mark]
		vm.mu.Unlock()
		if ok {
			vm.waitConsole("uptime", 10*time.Second)
			stopVM(vm)
			if testing.Verbose() && os.Getenv("STACK_BENCH_CONSOLE") != "" {
				b.Logf("console:\n%s", vm.consoleText())
			}
			return at.Sub(vm.start)
		}
		if time.Now().After(deadline) {
			b.Fatalf("no %q on the console within %s", mark, bootTimeout)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func stopVM(vm *testVM) {
	syscall.Kill(-vm.cmd.Process.Pid, syscall.SIGKILL)
	<-vm.done
}

// bareInitramfs is the image's initramfs followed by a second archive that
// replaces /init with a shell script printing a mark at once (the kernel
// unpacks concatenated archives in order, later entries replacing earlier
// ones). It boots the same kernel with the same archive contents to the
// first userspace instruction that can report.
func bareInitramfs(b *testing.B, img *Image, script string) string {
	base, err := os.ReadFile(img.Initramfs)
	if err != nil {
		b.Fatal(err)
	}
	var extra bytes.Buffer
	if err := writeArchive(&extra, []cpio.Record{cpio.StaticFile("init", script, 0o755)}, 1); err != nil {
		b.Fatal(err)
	}
	p := filepath.Join(b.TempDir(), "bare.cpio.gz")
	if err := os.WriteFile(p, append(base, extra.Bytes()...), 0o600); err != nil {
		b.Fatal(err)
	}
	return p
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// The two baselines' /init scripts. bare prints at once: the kernel's own
// boot. script does by hand what the stack init does before its ready
// report (load the boot modules, configure lo and the NIC) and then
// prints: the same point, reached without our init.
const (
	bareInit = "#!/bin/sh\necho 'MARK bare-ready' >/dev/console\nmount -t proc proc /proc\necho uptime $(cat /proc/uptime)\nexec sleep 1000\n"

	scriptInit = `#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
while read g p; do [ "$g" = boot ] && insmod "$p"; done < /etc/stack/modules.load
ip link set lo up
ip addr add 10.42.0.2/24 dev eth0
ip link set eth0 up
ip route add default via 10.42.0.1
echo 'MARK script-ready' >/dev/console
echo uptime $(cat /proc/uptime)
exec sleep 1000
`
)

// BenchmarkBootOverhead: our init to its ready report on the agent port
// (modules, config disk, NIC configured) against baselines on the same
// kernel and archive, interleaved: bare (/init prints at once), script (a
// shell /init doing the same bring-up, then printing), and stack-console
// (our init again, timed at its "ready" console line, without a host on
// the agent port). Medians, since a shared TCG host is noisy.
func BenchmarkBootOverhead(b *testing.B) {
	img := testImage(b)
	bare := bareInitramfs(b, img, bareInit)
	script := bareInitramfs(b, img, scriptInit)
	// Each round boots all variants, in an order rotated from round to
	// round so that none always goes first.
	variants := []struct {
		name string
		boot func() time.Duration
	}{
		{"stack", func() time.Duration { return bootToReady(b, img, "") }},
		{"stack-console", func() time.Duration { return bootToMark(b, img, "", "init-ready") }},
		{"bare", func() time.Duration { return bootToMark(b, img, bare, "bare-ready") }},
		{"script", func() time.Duration { return bootToMark(b, img, script, "script-ready") }},
	}
	times := map[string][]time.Duration{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := range variants {
			v := variants[(i+j)%len(variants)]
			d := v.boot()
			times[v.name] = append(times[v.name], d)
			b.Logf("round %d: %s %v", i, v.name, d.Round(time.Millisecond))
		}
	}
	b.StopTimer()
	med := map[string]time.Duration{}
	for _, v := range variants {
		med[v.name] = median(times[v.name])
		b.ReportMetric(ms(med[v.name]), v.name+"-median-ms")
	}
	b.ReportMetric(float64(med["stack"])/float64(med["bare"]), "stack/bare")
	b.ReportMetric(float64(med["stack"])/float64(med["script"]), "stack/script")
	b.ReportMetric(float64(med["stack"])/float64(med["stack-console"]), "stack/stack-console")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkBootCompression boots the image built with each initramfs
// compression to the ready report, rounds rotated, against none (the
// default). Wall-clock, so only meaningful on a quiet host;
// BenchmarkGuestWorkICount measures the same in guest time. It also reports each archive's size and the guest kernel's
// uptime when the init started (unpacking the archive is part of that).
func BenchmarkBootCompression(b *testing.B) {
	testImage(b)
	variants := []string{"none", "gzip1", "gzip6", "gzip9"}
	imgs := map[string]*Image{}
	size := map[string]int64{}
	for _, v := range variants {
		img, err := Ensure(context.Background(), Options{Compression: v})
		if err != nil {
			b.Fatal(err)
		}
		imgs[v] = img
		st, err := os.Stat(img.Initramfs)
		if err != nil {
			b.Fatal(err)
		}
		size[v] = st.Size()
	}
	times := map[string][]time.Duration{}
	uptimes := map[string][]time.Duration{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := range variants {
			v := variants[(i+j)%len(variants)]
			vm := bootVM(b, imgs[v], benchSpec(""))
			agent := vm.dialAgent(30 * time.Second)
			agent.until(b, bootTimeout, isReady)
			d := time.Since(vm.start)
			stopVM(vm)
			times[v] = append(times[v], d)
			if m := uptimeRE.FindStringSubmatch(vm.consoleText()); m != nil {
				if u, err := time.ParseDuration(m[1] + "s"); err == nil {
					uptimes[v] = append(uptimes[v], u)
				}
			}
			b.Logf("round %d: %s %v", i, v, d.Round(time.Millisecond))
		}
	}
	b.StopTimer()
	for _, v := range variants {
		b.ReportMetric(float64(size[v])/(1<<20), v+"-MiB")
		b.ReportMetric(ms(median(times[v])), v+"-median-ms")
		b.ReportMetric(ms(median(uptimes[v])), v+"-kernel-ms")
		if v != "none" {
			b.ReportMetric(float64(median(times[v]))/float64(median(times["none"])), v+"/none")
		}
	}
	b.ReportMetric(0, "ns/op")
}

var uptimeRE = regexp.MustCompile(`stack-init started.*kernel_uptime=([0-9.]+)`)

var (
	readyUptimeRE = regexp.MustCompile(`msg=ready .*uptime=([0-9.]+)`)
	markUptimeRE  = regexp.MustCompile(`(?m)^uptime ([0-9.]+)`)
)

// guestSeconds waits for re on vm's console and returns its first group.
func guestSeconds(b *testing.B, vm *testVM, re *regexp.Regexp) time.Duration {
	deadline := time.Now().Add(bootTimeout)
	for time.Now().Before(deadline) {
		if m := re.FindStringSubmatch(vm.consoleText()); m != nil {
			d, err := time.ParseDuration(m[1] + "s")
			if err != nil {
				b.Fatal(err)
			}
			return d
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.Fatalf("no %v on the console:\n%s", re, vm.consoleText())
	return 0
}

// BenchmarkGuestWorkICount measures guest-side work in guest time under
// -icount (instructions plus idle), which the host's load does not change:
// the guest clock when the stack init reports ready, against the bare and
// script baselines reaching their mark, and the stack image (uncompressed)
// against gzip-compressed builds of it. Host-side costs (QEMU start-up, the driver) are
// not in these numbers; BenchmarkBootOverhead has them.
func BenchmarkGuestWorkICount(b *testing.B) {
	img := testImage(b)
	bare := bareInitramfs(b, img, bareInit)
	script := bareInitramfs(b, img, scriptInit)
	comp := map[string]string{}
	for _, c := range []string{"gzip1", "gzip6", "gzip9"} {
		ci, err := Ensure(context.Background(), Options{Compression: c})
		if err != nil {
			b.Fatal(err)
		}
		if ci.Kernel != img.Kernel && ci.KernelRelease != img.KernelRelease {
			b.Fatal("compression variants must share the kernel")
		}
		comp[c] = ci.Initramfs
	}
	type variant struct {
		name, initrd string
		re           *regexp.Regexp
	}
	variants := []variant{
		{"stack", "", readyUptimeRE},
		{"bare", bare, markUptimeRE},
		{"script", script, markUptimeRE},
		{"stack-gzip1", comp["gzip1"], readyUptimeRE},
		{"stack-gzip6", comp["gzip6"], readyUptimeRE},
		{"stack-gzip9", comp["gzip9"], readyUptimeRE},
	}
	times := map[string][]time.Duration{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, v := range variants {
			spec := benchSpec(v.initrd)
			spec.icount = true
			vm := bootVM(b, img, spec)
			d := guestSeconds(b, vm, v.re)
			stopVM(vm)
			times[v.name] = append(times[v.name], d)
			b.Logf("round %d: %s %v guest time", i, v.name, d)
		}
	}
	b.StopTimer()
	med := map[string]time.Duration{}
	for _, v := range variants {
		med[v.name] = median(times[v.name])
		b.ReportMetric(ms(med[v.name]), v.name+"-guest-ms")
	}
	for _, base := range []string{"bare", "script", "stack-gzip1", "stack-gzip6", "stack-gzip9"} {
		b.ReportMetric(float64(med["stack"])/float64(med[base]), "stack/"+base)
	}
	b.ReportMetric(0, "ns/op")
}
