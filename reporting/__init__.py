"""Reporting: figures and tables made of what the stages computed or wrote (image grids, loss
curves, real-against-generated pictures, the self-consuming loops side by side, Plan 2's tables
rebuilt from its files). Nothing here trains or scores. May import ``runtime``, ``dataio``,
``evaluation`` and ``training``."""
