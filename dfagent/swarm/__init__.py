"""The builtin swarm: agents find each other, keep a directory of who holds which piece
(each blob has a home agent chosen by rendezvous hashing), and serve pieces to each other."""
