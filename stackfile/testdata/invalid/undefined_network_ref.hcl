# want: 7: Reference to undeclared network
network "lan" {
  subnet = "10.42.0.0/24"
}
vm "web" {
  network "lan" {
    ip = cidrhost(network.lna.subnet, 10)
  }
}
