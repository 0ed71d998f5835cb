# want: 3: Dependency cycle
vm "a" {
  depends_on = [vm.b]
}

vm "b" {
  depends_on = [vm.c]
}

vm "c" {
  depends_on = [vm.a]
}
