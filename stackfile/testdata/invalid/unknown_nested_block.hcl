# want: 6: Unsupported block type
network "lan" {
  subnet = "10.42.0.0/24"
}
vm "web" {
  pubilsh {
    host_port = 80
  }
}
