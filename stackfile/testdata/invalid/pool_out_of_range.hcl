# want: 3: pool out of range
vm "web" {
  pool = 99
}
