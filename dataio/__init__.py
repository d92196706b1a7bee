"""Data in and files out: the image datasets (``data_sources``), COCO captions (``coco``),
held-out splits (``splits``) and the files stages pass to each other through ``data/``
(``artifacts``: atomic NPZ and checkpoint writes, ``meta``, checked loads, output locks). May
import ``runtime`` only."""
