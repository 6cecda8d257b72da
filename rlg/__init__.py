"""rlg-bench: Reinforcement Learning Guidance (arXiv 2508.21016) for stock diffusers pipelines."""

__version__ = "0.1.0"
