# A vm with nothing set gets every default.
network "lan" {
  subnet = "192.168.10.0/24"
}

vm "bare" {
  network "lan" {}
}
