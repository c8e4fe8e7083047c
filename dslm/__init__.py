"""dslm: pretrain masked, causal and permuted transformer language models on a DeepSpeed engine."""

__version__ = "0.1.0"
