package stackfile

import "github.com/hashicorp/hcl/v2"

// The schemas below are the whole stack-file language. hcl checks bodies
// against them, which is where "An argument named X is not expected here.
// Did you mean Y?" comes from.

var topSchema = &hcl.BodySchema{
	Blocks: []hcl.BlockHeaderSchema{
		{Type: "stack", LabelNames: []string{"name"}},
		{Type: "variable", LabelNames: []string{"name"}},
		{Type: "locals"},
		{Type: "network", LabelNames: []string{"name"}},
		{Type: "volume", LabelNames: []string{"name"}},
		{Type: "vm", LabelNames: []string{"name"}},
	},
}

var stackSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "description"}},
}

var variableSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "type"},
		{Name: "default"},
		{Name: "description"},
		{Name: "sensitive"},
	},
	Blocks: []hcl.BlockHeaderSchema{{Type: "validation"}},
}

var validationSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "condition", Required: true},
		{Name: "error_message", Required: true},
	},
}

var networkSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "subnet", Required: true},
		{Name: "gateway"},
		{Name: "dhcp"},
		{Name: "dns"},
		{Name: "egress"},
	},
	// egress { allow = [...] } turns egress on with an allow-list; the
	// attribute form (egress = true) turns it on without one.
	Blocks: []hcl.BlockHeaderSchema{{Type: "egress"}},
}

var egressSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "allow"}},
}

var volumeSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "size", Required: true},
		{Name: "format"},
	},
}

var vmSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "count"},
		{Name: "for_each"},
		{Name: "cpus"},
		{Name: "memory_mb"},
		{Name: "kernel"},
		{Name: "initramfs"},
		{Name: "cmdline"},
		{Name: "command"},
		{Name: "image"},
		{Name: "entrypoint"},
		{Name: "env"},
		{Name: "root_disk"},
		{Name: "depends_on"},
		{Name: "restart"},
		{Name: "hypervisor"},
		{Name: "machine"},
		{Name: "accel"},
		{Name: "template"},
		{Name: "machine_id"},
		{Name: "cpu_limit"},
		{Name: "pool"},
	},
	Blocks: []hcl.BlockHeaderSchema{
		{Type: "network", LabelNames: []string{"name"}},
		{Type: "shared_dir", LabelNames: []string{"name"}},
		{Type: "disk", LabelNames: []string{"name"}},
		{Type: "publish"},
		{Type: "ready"},
		{Type: "health"},
		{Type: "cloud_init"},
		{Type: "secret", LabelNames: []string{"name"}},
	},
}

var secretSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "file", Required: true}},
}

var nicSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "ip"}, {Name: "mac"}},
}

var sharedDirSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "host_path", Required: true},
		{Name: "guest_path", Required: true},
		{Name: "read_only"},
	},
}

var diskSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "volume"}, {Name: "size"}, {Name: "guest_path"}},
}

var publishSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "host_port", Required: true},
		{Name: "guest_port", Required: true},
		{Name: "protocol"},
		{Name: "host_ip"},
	},
}

var readySchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "tcp"}, {Name: "http"}, {Name: "exec"}, {Name: "timeout"}},
}

var healthSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "tcp"}, {Name: "http"}, {Name: "exec"}, {Name: "interval"},
		{Name: "timeout"}, {Name: "retries"}, {Name: "start_period"}},
}

var cloudInitSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "user_data"}, {Name: "ssh_authorized_keys"}, {Name: "strict"}},
}

// Allowed values of enumerated attributes.
var (
	validFormats   = []string{"ext4", "raw"}
	validProtocols = []string{"tcp", "udp"}
	validRestarts  = []string{RestartNo, RestartOnFailure, RestartAlways}
	// validHypervisors are those this build has a driver for; the names
	// of others are known (knownHypervisors) so that they get a clearer
	// error than a typo does.
	validHypervisors = []string{"auto", "qemu"}
	knownHypervisors = []string{"cloud-hypervisor", "firecracker"}
	validAccels      = []string{AccelAuto, AccelKVM, AccelTCG}
	validMachines    = []string{"auto", "microvm", "q35"}
)
