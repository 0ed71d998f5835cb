# want: 3: Invalid machine_id
vm "web" {
  machine_id = "ABC"
}
