# want: 3: Cycle in local values
locals {
  a = local.b
  b = local.c
  c = local.a
}
