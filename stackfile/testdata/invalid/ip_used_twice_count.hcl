# want: 8: IP address used twice
network "lan" {
  subnet = "10.42.0.0/24"
}
vm "web" {
  count = 2
  network "lan" {
    ip = "10.42.0.10"
  }
}
