"""Package placeholder; see README.md architecture."""
