# want: 4: Reference to undeclared volume
vm "web" {
  disk "data" {
    volume = volume.pgdata
  }
}
