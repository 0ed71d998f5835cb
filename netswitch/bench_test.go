package netswitch

import (
	"fmt"
	"testing"
)

// BenchmarkForward measures the switch's own work per frame (validation,
// learning, lookup, queueing, counters) for known unicast in batches, with
// the destination an in-process port, so that no system call is timed.
// Compare ports=2 with ports=10 for the cost of idle ports.
func BenchmarkForward(b *testing.B) {
	for _, ports := range []int{2, 10} {
		for _, size := range []int{64, 1500} {
			b.Run(fmt.Sprintf("ports=%d/bytes=%d", ports, size), func(b *testing.B) {
				sw, err := New(Config{Name: "bench"})
				if err != nil {
					b.Fatal(err)
				}
				defer sw.Close()
				var got int
				src, err := sw.AddInternal("src", func([]byte) {})
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
	}
}
