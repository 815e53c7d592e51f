"""Pure code the repository server and the utility share (tests/unit/test_architecture.py)."""
