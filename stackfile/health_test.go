package stackfile

import (
	"reflect"
	"testing"
	"time"
)

func TestHealthBlock(t *testing.T) {
	dir := writeFiles(t, map[string]string{"stack.hcl": `
vm "web" {
  health {
    http         = "http://localhost/"
    interval     = "5s"
    retries      = 2
    start_period = "10s"
  }
}
vm "db" {
  health {
    exec = ["pg_isready"]
  }
}
`})
	st := mustLoad(t, Options{Dir: dir})
	want := map[string]*Health{
		"web": {HTTP: "http://localhost/", Interval: 5 * time.Second, Timeout: 30 * time.Second, Retries: 2, StartPeriod: 10 * time.Second},
		"db":  {Exec: []string{"pg_isready"}, Interval: 30 * time.Second, Timeout: 30 * time.Second, Retries: 3},
	}
	for _, vm := range st.VMs {
		if !reflect.DeepEqual(vm.Health, want[vm.Name]) {
			t.Errorf("%s: health %+v, want %+v", vm.Name, vm.Health, want[vm.Name])
		}
	}

	for src, summary := range map[string]string{
		`vm "a" {
  health {
    interval = "1s"
  }
}`: "Health check without a probe",
		`vm "a" {
  health {
    tcp  = 80
    exec = ["true"]
  }
}`: "More than one health probe",
		`vm "a" {
  health {
    tcp     = 80
    retries = 0
  }
}`: "Retries out of range",
		`vm "a" {
  health {
    tcp      = 80
    interval = "soon"
  }
}`: "Invalid duration",
	} {
		d := loadErr(t, Options{Dir: writeFiles(t, map[string]string{"stack.hcl": src})})
		if d.Summary != summary {
			t.Errorf("%q: summary %q, want %q", src, d.Summary, summary)
		}
	}
}
