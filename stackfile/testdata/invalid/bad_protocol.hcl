# want: 6: Invalid protocol
vm "web" {
  publish {
    host_port  = 8080
    guest_port = 80
    protocol   = "sctp"
  }
}
