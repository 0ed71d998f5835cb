# want: 3: Invalid subnet
network "lan" {
  subnet = "10.42.0.0"
}
