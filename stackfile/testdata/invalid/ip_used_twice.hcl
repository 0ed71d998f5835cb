# want: 13: IP address used twice
network "lan" {
  subnet = "10.42.0.0/24"
}
vm "a" {
  network "lan" {
    ip = "10.42.0.10"
  }
}

vm "b" {
  network "lan" {
    ip = "10.42.0.10"
  }
}
