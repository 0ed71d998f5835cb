# want: 10: Invalid user_data
vm "db" {
  kernel    = "../files/vmlinuz"
  initramfs = "../files/initrd.img"
  root_disk = "../files/disk.raw"
  cloud_init {
    user_data = <<-EOT
      #cloud-config
      packages: [curl]
      packages: [git]
    EOT
  }
}
