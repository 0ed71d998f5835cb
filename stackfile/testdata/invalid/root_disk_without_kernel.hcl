# want: 3: root_disk requires a kernel
vm "db" {
  root_disk = "../files/disk.raw"
}
