# want: 3: Dependency cycle
vm "a" {
  depends_on = [vm.a]
}
