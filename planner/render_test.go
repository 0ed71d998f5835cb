package planner

import (
	"encoding/json"
	"testing"
)

func TestUnescapeHTML(t *testing.T) {
	for in, want := range map[string]string{
		`"a \u003e\u003e f \u0026\u0026 b \u003c c"`: `"a >> f && b < c"`,
		`"\u003E\u0026"`:                `">&"`,                         // upper-case hex too
		`"\\u003e"`:                     `"\\u003e"`,                    // an escaped backslash, then text
		`"\\\u003e"`:                    `"\\>"`,                        // an escaped backslash, then >
		`"\u0027 \u2028 \n \" \u00e9"`:  `"\u0027 \u2028 \n \" \u00e9"`, // other escapes stay
		`{"k\u0026":["\u003c",1,null]}`: `{"k&":["<",1,null]}`,
		`"no escapes"`:                  `"no escapes"`,
	} {
		got := string(unescapeHTML([]byte(in)))
		if got != want {
			t.Errorf("unescapeHTML(%s) = %s, want %s", in, got, want)
			continue
		}
		var a, b any
		if json.Unmarshal([]byte(in), &a) != nil || json.Unmarshal([]byte(got), &b) != nil {
			t.Errorf("unescapeHTML(%s) = %s: not both valid JSON", in, got)
		} else if ja, jb := compactOf(t, a), compactOf(t, b); ja != jb {
			t.Errorf("unescapeHTML(%s) = %s: another value (%s, %s)", in, got, ja, jb)
		}
	}
}

func compactOf(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
