# want: 7: IP address is the gateway address
network "lan" {
  subnet = "10.42.0.0/24"
}
vm "web" {
  network "lan" {
    ip = "10.42.0.1"
  }
}
