# want: 4: Missing root_disk file
vm "db" {
  kernel    = "../files/vmlinuz"
  root_disk = "../files/no-such-disk.raw"
}
