# want: 10: guest_path on a raw volume
volume "blob" {
  size   = "1MiB"
  format = "raw"
}

vm "db" {
  disk "data" {
    volume     = volume.blob
    guest_path = "/data"
  }
}
