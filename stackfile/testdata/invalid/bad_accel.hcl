# want: 3: Invalid accel
vm "web" {
  accel = "hvf"
}
