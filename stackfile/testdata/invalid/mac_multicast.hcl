# want: 7: Multicast MAC address
network "lan" {
  subnet = "10.42.0.0/24"
}
vm "web" {
  network "lan" {
    mac = "01:00:5e:00:00:01"
  }
}
