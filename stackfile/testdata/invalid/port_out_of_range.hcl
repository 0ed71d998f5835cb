# want: 4: Port out of range
vm "web" {
  publish {
    host_port  = 70000
    guest_port = 80
  }
}
