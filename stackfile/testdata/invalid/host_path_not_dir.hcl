# want: 4: Invalid host_path
vm "web" {
  shared_dir "src" {
    host_path  = "../files/vmlinuz"
    guest_path = "/src"
  }
}
