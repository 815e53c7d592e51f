"""The pure core: desired state, planner, placement, addresses, XML builders.

No I/O (tests/unit/test_architecture.py).
"""
