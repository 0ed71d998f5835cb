# want: 6: Invalid image reference
# want: 12: image and root_disk together
# want: 17: entrypoint needs image
# want: 22: Pool with an image
vm "bad" {
  image = "Not A Reference"
}

vm "both" {
  image     = "alpine:3"
  kernel    = "bad_accel.hcl"
  root_disk = "bad_accel.hcl"
}

vm "ep" {
  command    = ["sh"]
  entrypoint = ["/bin/sh"]
}

vm "pooled" {
  image = "alpine:3"
  pool  = 1
}
