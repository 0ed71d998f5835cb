# want: 3: Invalid hypervisor
vm "web" {
  hypervisor = "kvmtool"
}
