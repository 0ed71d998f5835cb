# want: 7: Pool with disks or shared directories
volume "v" {
  size = "64MiB"
}

vm "web" {
  pool = 2
  disk "d" {
    volume = volume.v
  }
}
