# want: 3: Reference to undeclared vm
vm "web" {
  depends_on = [vm.db]
}
