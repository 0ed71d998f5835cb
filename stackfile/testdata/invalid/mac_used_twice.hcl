# want: 14: MAC address used twice
network "lan" {
  subnet = "10.42.0.0/24"
}
network "dmz" {
  subnet = "10.43.0.0/24"
}

vm "web" {
  network "lan" {
    mac = "52:54:00:12:34:56"
  }
  network "dmz" {
    mac = "52:54:00:12:34:56"
  }
}
