"""Search: search spaces and hardware-aware architecture search."""
