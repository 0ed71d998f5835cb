package export

// The subset of the Kubernetes, KubeVirt, CDI and Multus schemas that
// KubeVirt exports use, with the published JSON names. The exporter keeps
// its own structs rather than importing kubevirt.io/api and k8s.io/api:
// those would bring apimachinery and its dependencies into the stack binary
// for a few dozen fields. The tests decode every object strictly into the
// published types, so a misspelt or misplaced field fails them.

type typeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
}

type objectMeta struct {
	Name        string            `json:"name"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// --- core/v1

type secret struct {
	typeMeta
	Metadata objectMeta        `json:"metadata"`
	Type     string            `json:"type"`
	Data     map[string][]byte `json:"data"`
}

type configMap struct {
	typeMeta
	Metadata objectMeta        `json:"metadata"`
	Data     map[string]string `json:"data"`
}

type pvc struct {
	typeMeta
	Metadata objectMeta `json:"metadata"`
	Spec     pvcSpec    `json:"spec"`
}

type pvcSpec struct {
	AccessModes []string  `json:"accessModes"`
	VolumeMode  string    `json:"volumeMode,omitempty"`
	Resources   resources `json:"resources"`
}

type resources struct {
	Requests map[string]string `json:"requests"`
}

type service struct {
	typeMeta
	Metadata objectMeta  `json:"metadata"`
	Spec     serviceSpec `json:"spec"`
}

type serviceSpec struct {
	Type     string            `json:"type,omitempty"`
	Selector map[string]string `json:"selector"`
	Ports    []servicePort     `json:"ports"`
}

type servicePort struct {
	Name       string `json:"name"`
	Protocol   string `json:"protocol"`
	Port       int    `json:"port"`
	TargetPort int    `json:"targetPort"`
}

// --- k8s.cni.cncf.io/v1

type networkAttachmentDefinition struct {
	typeMeta
	Metadata objectMeta `json:"metadata"`
	Spec     struct {
		// Config is the CNI configuration, itself a JSON document.
		Config string `json:"config"`
	} `json:"spec"`
}

// --- kubevirt.io/v1

type virtualMachine struct {
	typeMeta
	Metadata objectMeta `json:"metadata"`
	Spec     vmSpec     `json:"spec"`
}

type vmSpec struct {
	RunStrategy         string               `json:"runStrategy"`
	DataVolumeTemplates []dataVolumeTemplate `json:"dataVolumeTemplates,omitempty"`
	Template            vmiTemplate          `json:"template"`
}

type vmiTemplate struct {
	Metadata objectMeta `json:"metadata"`
	Spec     vmiSpec    `json:"spec"`
}

type vmiSpec struct {
	Hostname       string    `json:"hostname,omitempty"`
	Domain         domain    `json:"domain"`
	Networks       []network `json:"networks,omitempty"`
	Volumes        []volume  `json:"volumes,omitempty"`
	ReadinessProbe *probe    `json:"readinessProbe,omitempty"`
}

type domain struct {
	CPU      cpu       `json:"cpu"`
	Memory   memory    `json:"memory"`
	Machine  *machine  `json:"machine,omitempty"`
	Firmware *firmware `json:"firmware,omitempty"`
	Devices  devices   `json:"devices"`
}

type cpu struct {
	Cores int `json:"cores"`
}

type memory struct {
	Guest string `json:"guest"`
}

type machine struct {
	Type string `json:"type"`
}

type firmware struct {
	KernelBoot *kernelBoot `json:"kernelBoot,omitempty"`
}

type kernelBoot struct {
	KernelArgs string               `json:"kernelArgs,omitempty"`
	Container  *kernelBootContainer `json:"container"`
}

type kernelBootContainer struct {
	Image      string `json:"image"`
	KernelPath string `json:"kernelPath"`
	InitrdPath string `json:"initrdPath,omitempty"`
}

type devices struct {
	AutoattachPodInterface *bool        `json:"autoattachPodInterface,omitempty"`
	Disks                  []disk       `json:"disks,omitempty"`
	Interfaces             []iface      `json:"interfaces,omitempty"`
	Filesystems            []filesystem `json:"filesystems,omitempty"`
}

type disk struct {
	Name   string     `json:"name"`
	Serial string     `json:"serial,omitempty"`
	Disk   diskTarget `json:"disk"`
}

type diskTarget struct {
	Bus      string `json:"bus"`
	ReadOnly bool   `json:"readonly,omitempty"`
}

type filesystem struct {
	Name     string   `json:"name"`
	Virtiofs struct{} `json:"virtiofs"`
}

type iface struct {
	Name       string    `json:"name"`
	MACAddress string    `json:"macAddress,omitempty"`
	Bridge     *struct{} `json:"bridge,omitempty"`
	Masquerade *struct{} `json:"masquerade,omitempty"`
	Ports      []port    `json:"ports,omitempty"`
}

type port struct {
	Name     string `json:"name"`
	Protocol string `json:"protocol"`
	Port     int    `json:"port"`
}

type network struct {
	Name   string         `json:"name"`
	Pod    *struct{}      `json:"pod,omitempty"`
	Multus *multusNetwork `json:"multus,omitempty"`
}

type multusNetwork struct {
	NetworkName string `json:"networkName"`
}

type volume struct {
	Name                  string                 `json:"name"`
	ContainerDisk         *containerDisk         `json:"containerDisk,omitempty"`
	DataVolume            *dataVolumeSource      `json:"dataVolume,omitempty"`
	PersistentVolumeClaim *pvcVolumeSource       `json:"persistentVolumeClaim,omitempty"`
	EmptyDisk             *emptyDisk             `json:"emptyDisk,omitempty"`
	CloudInitNoCloud      *cloudInitNoCloud      `json:"cloudInitNoCloud,omitempty"`
	ConfigMap             *configMapVolumeSource `json:"configMap,omitempty"`
}

type containerDisk struct {
	Image string `json:"image"`
}

type dataVolumeSource struct {
	Name string `json:"name"`
}

type pvcVolumeSource struct {
	ClaimName string `json:"claimName"`
}

type emptyDisk struct {
	Capacity string `json:"capacity"`
}

type configMapVolumeSource struct {
	Name string `json:"name"`
}

type cloudInitNoCloud struct {
	UserData             string     `json:"userData,omitempty"`
	UserDataSecretRef    *secretRef `json:"secretRef,omitempty"` // sic: KubeVirt's name
	NetworkData          string     `json:"networkData,omitempty"`
	NetworkDataSecretRef *secretRef `json:"networkDataSecretRef,omitempty"`
}

type secretRef struct {
	Name string `json:"name"`
}

type probe struct {
	TCPSocket        *tcpSocket `json:"tcpSocket,omitempty"`
	HTTPGet          *httpGet   `json:"httpGet,omitempty"`
	Exec             *execCmd   `json:"exec,omitempty"`
	PeriodSeconds    int        `json:"periodSeconds,omitempty"`
	FailureThreshold int        `json:"failureThreshold,omitempty"`
}

type tcpSocket struct {
	Port int `json:"port"`
}

type httpGet struct {
	Path   string `json:"path,omitempty"`
	Port   int    `json:"port"`
	Scheme string `json:"scheme,omitempty"`
}

type execCmd struct {
	Command []string `json:"command"`
}

// --- cdi.kubevirt.io/v1beta1

type dataVolumeTemplate struct {
	Metadata objectMeta     `json:"metadata"`
	Spec     dataVolumeSpec `json:"spec"`
}

type dataVolumeSpec struct {
	Source  dataVolumeSourceSpec `json:"source"`
	Storage storageSpec          `json:"storage"`
}

type dataVolumeSourceSpec struct {
	Registry *struct {
		URL string `json:"url"`
	} `json:"registry,omitempty"`
	HTTP *struct {
		URL string `json:"url"`
	} `json:"http,omitempty"`
}

type storageSpec struct {
	Resources resources `json:"resources"`
}
