# Count instances sort numerically (web-2 before web-10), blocks by name.
vm "web" {
  count = 12
}

vm "api" {
  for_each = { b = 1, a = 2 }
  cpus     = each.value
}

vm "cache" {
  count = 0
}
