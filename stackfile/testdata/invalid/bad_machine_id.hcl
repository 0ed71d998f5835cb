# want: 7: Invalid machine_id
# want: 11: Invalid machine_id
# want: 15: Invalid machine_id
# want: 19: Invalid machine_id
# want: 23: Invalid machine_id
vm "web" {
  machine_id = "ABC"
}

vm "upper" {
  machine_id = "0123456789ABCDEF0123456789ABCDEF"
}

vm "zero" {
  machine_id = "00000000000000000000000000000000"
}

vm "short" {
  machine_id = "0123456789abcdef0123456789abcde"
}

vm "notstring" {
  machine_id = 12345
}
