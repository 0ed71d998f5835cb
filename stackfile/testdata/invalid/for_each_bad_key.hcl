# want: 3: Invalid for_each key
vm "web" {
  for_each = toset(["blue", "Green_1"])
}
