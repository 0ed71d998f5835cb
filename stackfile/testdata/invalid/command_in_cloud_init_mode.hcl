# want: 6: command needs initramfs mode
# want: 7: env needs initramfs mode
vm "db" {
  kernel    = "../files/vmlinuz"
  root_disk = "../files/disk.raw"
  command   = ["postgres"]
  env       = { PGDATA = "/data" }
}
