# want: 6: Unsupported argument
network "lan" {
  subnet = "10.42.0.0/24"
}
vm "web" {
  cpu = 2
}
