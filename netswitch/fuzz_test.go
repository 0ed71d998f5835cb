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

// FuzzSwitchFrame injects one arbitrary frame into a fresh switch (fresh,
// so that every input is judged alone and reproducibly): no panic; a valid
// frame reaches the other port exactly once and is counted; an invalid one
// reaches nobody and is counted as a drop.
func FuzzSwitchFrame(f *testing.F) {
	f.Add(frame(broadcast, mac(1), 40))
	f.Add(frame(mac(2), mac(1), 1500))
	f.Add(make([]byte, 13))
	f.Add(frame(broadcast, MAC{1}, 10))
	f.Fuzz(func(t *testing.T, in []byte) {
		sw, err := New(Config{Name: "fuzz"})
		if err != nil {
			t.Fatal(err)
		}
		defer sw.Close()
		delivered := 0
		if _, err := sw.AddInternal("b", func([]byte) { delivered++ }); err != nil {
			t.Fatal(err)
		}
		a, err := sw.AddInternal("a", func([]byte) {})
		if err != nil {
			t.Fatal(err)
		}
		a.Inject(in)
		st, _ := sw.PortStats("a")
		if checkFrame(in, sw.MaxFrame()) == nil {
			if st.RxFrames != 1 || st.RxDrops != 0 || delivered != 1 {
				t.Fatalf("valid frame: counters %+v, delivered %d times", st, delivered)
			}
		} else if st.RxDrops != 1 || st.RxFrames != 0 || delivered != 0 {
			t.Fatalf("invalid frame: counters %+v, delivered %d times", st, delivered)
		}
	})
}
