"""Thin server-side git hooks installed into every repository by `cui create`.

Each module reads git's hook input and calls `reposerver.githooks`, where the logic lives.
"""
