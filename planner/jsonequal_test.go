package planner

import (
	"encoding/json"
	"testing"
)

func TestJSONEqualIsSemantic(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{`{"a":1,"b":[1,2]}`, `{ "b": [1, 2], "a": 1.0 }`, true},
		{`"\u0026\u003c\u003e é"`, `"&<> \u00e9"`, true},
		{`1e3`, `1000`, true},
		{`9007199254740993`, `9007199254740992`, false}, // beyond float64
		{`{"a":1}`, `{"a":1,"b":null}`, false},
		{`[1,2]`, `[2,1]`, false},
		{`"1"`, `1`, false},
		{`{"a":`, `{"a":`, true}, // equal bytes, even undecodable
		{`{"a":`, `{"a": `, false},
	} {
		if got := jsonEqual(json.RawMessage(tc.a), json.RawMessage(tc.b)); got != tc.want {
			t.Errorf("jsonEqual(%s, %s) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}
