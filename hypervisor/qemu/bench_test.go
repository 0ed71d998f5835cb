package qemu

import (
	"context"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// BenchmarkBoot compares a full VM life (start, boot to userspace, power
// off, exit) through the driver against running the same QEMU argv bare,
// rotating the order of the runs in each iteration so that all see the same
// machine load. The guest powers off as soon as its init runs.
//
// The baseline is bare QEMU started in its own session, as the driver does:
// with the kernel's autogroup scheduling a new session is a new scheduling
// group, which on a loaded machine changes QEMU's speed by more than the
// driver's own overhead; "bare-samesession" is reported for reference.
// Reported: the mean of each and driver/bare (the goal is <= 1.05).
//
//	go test -run '^$' -bench Boot -benchtime 10x ./hypervisor/qemu/
func BenchmarkBoot(b *testing.B) {
	if _, err := exec.LookPath(DefaultBinary); err != nil {
		b.Fatalf("%s not found: %v", DefaultBinary, err)
	}
	ctx := context.Background()
	d := New(Options{})
	host, err := d.Host()
	if err != nil {
		b.Fatal(err)
	}
	cfg := testConfig(b, "bench", "microvm", false)
	cfg.Cmdline = "stacktest.poweroff"
	host.GuestMicrovm = ProbeKernel(cfg.Kernel)
	args, err := BuildArgs(cfg, host)
	if err != nil {
		b.Fatal(err)
	}
	var bare, bareSame, drv time.Duration
	runBare := func(setsid bool, acc *time.Duration) {
		removeSockets(cfg.RunDir)
		t0 := time.Now()
		cmd := exec.Command(d.opts.Binary, args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: setsid}
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("bare qemu: %v\n%s", err, out)
		}
		*acc += time.Since(t0)
	}
	runDriver := func() {
		t1 := time.Now()
		inst, err := d.Start(ctx, cfg)
		if err != nil {
			b.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		st, err := inst.Wait(wctx)
		cancel()
		drv += time.Since(t1)
		inst.Close()
		if err != nil || !st.GuestShutdown {
			b.Fatalf("driver run: %+v, %v", st, err)
		}
	}
	runs := []func(){func() { runBare(true, &bare) }, runDriver, func() { runBare(false, &bareSame) }}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := range runs {
			runs[(i+j)%len(runs)]()
		}
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(bare.Seconds()*1000/n, "bare-ms/boot")
	b.ReportMetric(bareSame.Seconds()*1000/n, "bare-samesession-ms/boot")
	b.ReportMetric(drv.Seconds()*1000/n, "driver-ms/boot")
	b.ReportMetric(float64(drv)/float64(bare), "driver/bare")
}
