# want: 11: Host port published twice
vm "a" {
  publish {
    host_port  = 8080
    guest_port = 80
  }
}

vm "b" {
  publish {
    host_port  = 8080
    guest_port = 80
  }
}
