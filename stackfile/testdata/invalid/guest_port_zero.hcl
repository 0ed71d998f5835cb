# want: 5: Port out of range
vm "web" {
  publish {
    host_port  = 8080
    guest_port = 0
  }
}
