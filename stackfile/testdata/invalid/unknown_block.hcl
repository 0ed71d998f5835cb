# want: 2: Unsupported block type
netwrk "lan" {
  subnet = "10.42.0.0/24"
}
