package netaddr

import (
	"encoding/json"
	"testing"
)

func TestMAC(t *testing.T) {
	for in, want := range map[string]string{
		"52:54:00:12:34:56": "52:54:00:12:34:56",
		"52-54-00-AB-CD-EF": "52:54:00:ab:cd:ef",
		"5254.00ab.cdef":    "52:54:00:ab:cd:ef",
	} {
		m, err := ParseMAC(in)
		if err != nil || m.String() != want {
			t.Errorf("ParseMAC(%q) = %v, %v; want %s", in, m, err, want)
		}
	}
	for _, bad := range []string{"", "52:54:00:12:34", "00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01", "zz:54:00:12:34:56"} {
		if _, err := ParseMAC(bad); err == nil {
			t.Errorf("ParseMAC(%q) succeeded", bad)
		}
	}
	type nic struct {
		MAC  MAC `json:"mac"`
		Zero MAC `json:"zero,omitzero"`
	}
	b, err := json.Marshal(nic{MAC: MAC{0x52, 0x54, 0, 1, 2, 0xff}})
	if err != nil || string(b) != `{"mac":"52:54:00:01:02:ff"}` {
		t.Fatalf("marshal: %s %v", b, err)
	}
	var back nic
	if err := json.Unmarshal(b, &back); err != nil || back.MAC != (MAC{0x52, 0x54, 0, 1, 2, 0xff}) {
		t.Fatalf("unmarshal: %+v %v", back, err)
	}
	if err := json.Unmarshal([]byte(`{"mac":"nope"}`), &back); err == nil {
		t.Fatal("unmarshal of a bad MAC succeeded")
	}
	if !(MAC{0x01}).IsMulticast() || (MAC{0x52}).IsMulticast() || !(MAC{}).IsZero() {
		t.Fatal("IsMulticast or IsZero")
	}
}
