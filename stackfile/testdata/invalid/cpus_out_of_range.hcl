# want: 3: cpus out of range
vm "web" {
  cpus = 0
}
