# want: 9: Volume attached to more than one VM
volume "data" {
  size = "1GiB"
}

vm "web" {
  count = 2
  disk "data" {
    volume = volume.data
  }
}
