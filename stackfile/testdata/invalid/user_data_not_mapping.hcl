# want: 7: Invalid user_data
vm "db" {
  kernel    = "../files/vmlinuz"
  initramfs = "../files/initrd.img"
  root_disk = "../files/disk.raw"
  cloud_init {
    user_data = "#cloud-config\n- just\n- a list\n"
  }
}
