# want: 5: Invalid depends_on reference
vm "a" {}

vm "b" {
  depends_on = ["a"]
}
