package netswitch

import (
	"fmt"
	"net/netip"
	"testing"
)

// BenchmarkForward measures the switch's own work per frame (validation,
// learning, lookup, queueing, counters) for known unicast in batches, with
// the destination an in-process port, so that no system call is timed.
// Compare ports=2 with ports=10 for the cost of idle ports, and
// pinned=true (the sender's MAC and IP pinned, as for a VM) with false for
// the cost of checking its frames' sources.
func BenchmarkForward(b *testing.B) {
	for _, ports := range []int{2, 10} {
		for _, size := range []int{64, 1500} {
			for _, pinned := range []bool{false, true} {
				benchmarkForward(b, ports, size, pinned)
			}
		}
	}
}

func benchmarkForward(b *testing.B, ports, size int, pinned bool) {
	b.Run(fmt.Sprintf("ports=%d/bytes=%d/pinned=%v", ports, size, pinned), func(b *testing.B) {
		sw, err := New(Config{Name: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		defer sw.Close()
		var got int
		var opts []PortOption
		if pinned {
			// frame's payload puts 26.27.28.29 where an IPv4
			// source address is.
			opts = append(opts, PinMACs(mac(1)), PinIPs(netip.AddrFrom4([4]byte{26, 27, 28, 29})))
		}
		src, err := sw.AddInternal("src", func([]byte) {}, opts...)
		if err != nil {
			b.Fatal(err)
		}
		dst, err := sw.AddInternal("dst", func([]byte) { got++ })
		if err != nil {
			b.Fatal(err)
		}
		for i := 2; i < ports; i++ {
			idle, err := sw.AddInternal(fmt.Sprintf("idle%d", i), func([]byte) {})
			if err != nil {
				b.Fatal(err)
			}
			idle.Inject(frame(broadcast, mac(byte(0x10+i)), 60))
		}
		dst.Inject(frame(broadcast, mac(2), 60))
		frames := make([][]byte, maxBatch)
		for i := range frames {
			frames[i] = frame(mac(2), mac(1), size-EthHeaderLen)
		}
		fw := sw.newForwarder(src.p)
		got = 0
		b.SetBytes(int64(size * maxBatch))
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			fw.forward(frames)
		}
		b.StopTimer()
		if got != b.N*maxBatch {
			b.Fatalf("delivered %d of %d frames", got, b.N*maxBatch)
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*maxBatch), "ns/frame")
	})
}
