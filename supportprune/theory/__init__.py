"""The paper's title claim, checked numerically on small fully-connected networks.

Huang, Kong, Lucey (2017), sections 3.2–3.3, and Tian (2017, arXiv 1703.00560):

- ``separation``: with the supports fixed, an L-layer network is U v, U from the input and supports,
  v from the weights (Eq. 14–19).
- ``lifted``: the two-layer problem stacked over the data (Eq. 23), its lifted least-squares optimum and
  rank-one projection (Eq. 24–28), and the restricted-isometry quantities of Theorem 1 (Eq. 29).
- ``factored_gd``: plain gradient descent on the factored weights (W1, W2) from many random starts.
- ``tian``: Tian's closed-form population gradient of a ReLU student against a ReLU teacher under
  Gaussian inputs, its Monte Carlo check, and population gradient descent.
- ``experiments``: the sweeps behind ``supportprune theory`` (pure computation, no files).
- ``report``: plots and ``report.md`` (the only module that writes files).
"""
