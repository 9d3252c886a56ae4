"""Fixtures that start a private OpenSSH server on loopback (filled in by the SSH work)."""
