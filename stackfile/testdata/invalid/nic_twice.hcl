# want: 7: Network attached twice
network "lan" {
  subnet = "10.42.0.0/24"
}
vm "web" {
  network "lan" {}
  network "lan" {}
}
