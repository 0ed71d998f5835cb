# want: 2: Invalid stack name
stack "My Stack" {}
