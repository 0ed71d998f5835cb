# want: 4: Gateway outside subnet
network "lan" {
  subnet  = "10.42.0.0/24"
  gateway = "10.43.0.1"
}
