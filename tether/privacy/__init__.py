"""Privacy on top of control: differentially private training that a worker's owner sets and
enforces (`dp`), and the attacks on model updates that show why it is needed (`attacks`)."""
