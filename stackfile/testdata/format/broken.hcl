vm "web" {
  cpus = 
}
