# want: 2: Invalid network name
network "-lan" {
  subnet = "10.42.0.0/24"
}
