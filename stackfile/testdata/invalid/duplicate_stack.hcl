# want: 3: Duplicate stack block
stack "a" {}
stack "b" {}
