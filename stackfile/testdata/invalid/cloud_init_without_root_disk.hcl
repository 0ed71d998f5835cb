# want: 3: cloud_init requires root_disk
vm "web" {
  cloud_init {
    user_data = "#cloud-config\n"
  }
}
