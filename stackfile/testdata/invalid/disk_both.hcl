# want: 7: Invalid disk
volume "data" {
  size = "1GiB"
}

vm "web" {
  disk "data" {
    volume = volume.data
    size   = "1GiB"
  }
}
