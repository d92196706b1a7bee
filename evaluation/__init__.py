"""Metrics and scoring: the metric formulas (``metrics``), the evaluator CNN and the feature spaces
image metrics are computed in, drift metrics of generations in CLIP space, and ``scoring``, which
puts every stage's numbers beside their floors. May import ``runtime`` and ``dataio``."""
