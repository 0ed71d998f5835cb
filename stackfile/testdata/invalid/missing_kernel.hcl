# want: 3: Missing kernel file
vm "web" {
  kernel = "../files/no-such-vmlinuz"
}
