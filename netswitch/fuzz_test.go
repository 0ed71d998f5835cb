package netswitch

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

func FuzzStreamDecoder(f *testing.F) {
	f.Add(appendStreamFrame(nil, frame(broadcast, mac(1), 40)))
	f.Add(appendStreamFrame(appendStreamFrame(nil, frame(mac(2), mac(1), 1500)), frame(broadcast, mac(1), 10)))
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1})
	f.Add([]byte{0, 0, 5})
	f.Fuzz(func(t *testing.T, in []byte) {
		dec := streamDecoder{max: maxFrameLen(1500)}
		var re []byte
		off := 0
		for {
			fr, used, err := dec.next(in[off:])
			if err != nil {
				if !errors.Is(err, ErrBadLength) {
					t.Fatalf("unexpected error %v", err)
				}
				n := binary.BigEndian.Uint32(in[off:])
				if n != 0 && n <= uint32(dec.max) {
					t.Fatalf("length %d refused", n)
				}
				break
			}
			if used == 0 {
				// Incomplete: the rest must be shorter than what it announces.
				rest := in[off:]
				if len(rest) >= 4 && len(rest) >= 4+int(binary.BigEndian.Uint32(rest)) {
					t.Fatalf("complete frame reported incomplete")
				}
				break
			}
			if len(fr) == 0 || len(fr) > dec.max || used != len(fr)+4 {
				t.Fatalf("frame of %d bytes using %d", len(fr), used)
			}
			re = appendStreamFrame(re, fr)
			off += used
		}
		if !bytes.Equal(re, in[:off]) {
			t.Fatalf("re-encoding the decoded frames does not give the input back")
		}
	})
}

func FuzzSwitchFrame(f *testing.F) {
	f.Add(frame(broadcast, mac(1), 40))
	f.Add(frame(mac(2), mac(1), 1500))
	f.Add(make([]byte, 13))
	f.Add(frame(broadcast, MAC{1}, 10))
	sw, err := New(Config{Name: "fuzz"})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { sw.Close() })
	var delivered int
	if _, err := sw.AddInternal("b", func(fr []byte) { delivered++ }); err != nil {
		f.Fatal(err)
	}
	a, err := sw.AddInternal("a", func([]byte) {})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		delivered = 0
		before, _ := sw.PortStats("a")
		a.Inject(in)
		after, _ := sw.PortStats("a")
		valid := checkFrame(in, sw.MaxFrame()) == nil
		if valid && after.RxFrames != before.RxFrames+1 {
			t.Fatalf("valid frame not counted")
		}
		if !valid && (after.RxDrops != before.RxDrops+1 || delivered != 0) {
			t.Fatalf("invalid frame forwarded or not counted as a drop")
		}
		// A valid frame goes to b unless its destination was learned
		// behind a itself (a source address a sent earlier).
		if valid && delivered > 1 {
			t.Fatalf("frame delivered %d times to one port", delivered)
		}
	})
}
