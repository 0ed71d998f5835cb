# want: 3: Unsupported hypervisor
vm "web" {
  hypervisor = "firecracker"
}
