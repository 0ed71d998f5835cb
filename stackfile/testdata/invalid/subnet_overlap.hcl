# want: 6: Overlapping subnets
network "lan" {
  subnet = "10.42.0.0/24"
}
network "dmz" {
  subnet = "10.42.0.128/25"
}
