# host_ip: the default (127.0.0.1, written or not) loads as no address;
# 0.0.0.0 and :: are kept.
vm "web" {
  publish {
    host_port  = 8080
    guest_port = 80
  }
  publish {
    host_port  = 8081
    guest_port = 80
    host_ip    = "127.0.0.1"
  }
  publish {
    host_port  = 8443
    guest_port = 443
    host_ip    = "0.0.0.0"
  }
  publish {
    host_port  = 5353
    guest_port = 53
    protocol   = "udp"
    host_ip    = "::"
  }
}
