# want: 5: Invalid reference to a vm
vm "a" {}

vm "b" {
  cmdline = vm.a
}
