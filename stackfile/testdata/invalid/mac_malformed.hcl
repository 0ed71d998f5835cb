# want: 7: Invalid MAC address
network "lan" {
  subnet = "10.42.0.0/24"
}
vm "web" {
  network "lan" {
    mac = "52:54:00:12:34"
  }
}
