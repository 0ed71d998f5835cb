# want: 4: Missing host_path directory
vm "web" {
  shared_dir "src" {
    host_path  = "../files/no-such-dir"
    guest_path = "/src"
  }
}
