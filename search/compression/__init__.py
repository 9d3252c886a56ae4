"""Compression search per device: AMC-style pruning, HAQ-style mixed precision, or both, under budgets."""
