# want: 2: Missing required argument
network "lan" {
}
