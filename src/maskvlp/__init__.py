"""maskvlp: the experiment workflow for masked CLIP pre-training (FLIP and cluster masking)."""

__version__ = "0.1.0"
