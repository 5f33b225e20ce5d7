"""The ground floor: files a run leaves behind and how they are written. Atomic writes (``atomic``), checksummed
checkpoints read as plain data only (``checkpoint``), the files of a run directory (``layout``), setting an
earlier run aside (``run_aside``) and the protocol a run reports through (``reporter``). Imports nothing of
supportprune but ``errors``."""
