# want: 6: Invalid host_ip
vm "web" {
  publish {
    host_port  = 8080
    guest_port = 80
    host_ip    = "localhost"
  }
}
