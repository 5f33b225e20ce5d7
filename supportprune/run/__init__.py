"""Running the method, knowing no command: the engine and its phases (Dense, Sparse, re-Dense; train), opening a
run (``setup``), the state its checkpoints hold, the training loop, several processes (distributed, synchronised
batch norm) and the stored supports of I-alternation. The commands that run it are in ``pipelines``."""
