# want: 3: Invalid for_each argument
vm "web" {
  for_each = ["a", "b"]
}
