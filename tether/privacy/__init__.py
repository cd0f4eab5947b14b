"""Privacy on top of control: differentially private training that a worker's owner sets and
enforces (`dp`), the attacks on model updates that show why it is needed (`attacks`), and
computing on secret-shared tensors through pointers (`smpc`)."""
