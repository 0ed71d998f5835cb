# want: 3: Invalid subnet
network "lan" {
  subnet = "fd00::/64"
}
