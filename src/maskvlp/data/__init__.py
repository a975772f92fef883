"""Data: embedded and real sources, sharding, streaming loaders, tokenizer."""
