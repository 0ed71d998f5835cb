# want: 5: Invalid guest_path
vm "web" {
  shared_dir "src" {
    host_path  = "../files/shared"
    guest_path = "src"
  }
}
