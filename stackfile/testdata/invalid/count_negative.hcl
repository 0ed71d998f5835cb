# want: 3: Invalid count
vm "web" {
  count = -1
}
