# want: 3: Subnet too small
network "lan" {
  subnet = "10.42.0.0/31"
}
