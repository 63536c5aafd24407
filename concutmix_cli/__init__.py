"""concutmix: long-tailed image recognition with Contrastive CutMix (Pan et al., arXiv 2407.04911)."""

__version__ = "0.1.0"
