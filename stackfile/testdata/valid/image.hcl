vm "db" {
  image = "postgres:16-alpine"
  env = {
    POSTGRES_PASSWORD = "secret"
  }
}

vm "app" {
  image      = "oci:./layout:app"
  entrypoint = ["/bin/app"]
  command    = ["--port", "8080"]
}

vm "pinned" {
  image   = "docker.io/library/redis@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
  command = []
}
