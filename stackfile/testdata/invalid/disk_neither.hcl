# want: 3: Invalid disk
vm "web" {
  disk "data" {
    guest_path = "/data"
  }
}
