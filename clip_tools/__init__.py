"""CLIP and captions: a CLIP loaded by name or folder, image batches for its image tower,
L2-normalised text and image embeddings, and the caption phrasings of a class. May import
``runtime`` only."""
