"""Running the method: the engine and its phases, the run directory and its checkpoints (written atomically),
the training loop, several processes (distributed, synchronised batch norm) and the stored supports of
I-alternation."""
