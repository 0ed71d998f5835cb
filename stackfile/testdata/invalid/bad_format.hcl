# want: 4: Invalid format
volume "data" {
  size   = "1GiB"
  format = "xfs"
}
