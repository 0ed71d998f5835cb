# want: 4: Invalid combination of count and for_each
vm "web" {
  count    = 2
  for_each = toset(["a", "b"])
}
