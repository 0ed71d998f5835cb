# want: 3: Invalid environment variable name
vm "web" {
  env = { "MY-VAR" = "x" }
}
