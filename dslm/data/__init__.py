"""The data path: sources -> encode -> pack -> cache (or stream) -> sampler."""
