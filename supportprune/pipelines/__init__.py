"""The top floor: one module per command, each reading top to bottom and naming the phases it runs. ``compress``
(Dense, Sparse, re-Dense, then ``deliver``), ``train`` (training by alternation), ``deliver`` (export, benchmark
and report of a finished compress run), ``experiment`` (the paper's claims over seeds), ``criteria`` (pruning
criteria compared from one trained model) and ``export`` (a finished run's models to ONNX again)."""
