# want: 3: Invalid size
volume "data" {
  size = "1 gigabyte"
}
