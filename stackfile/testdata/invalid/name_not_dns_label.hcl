# want: 2: Invalid vm name
vm "Web_1" {}
