"""The Collective Utility: the cluster manager that runs virtual appliances.

Layers (README, Architecture): `core` (pure), `adapters` (I/O), `service` (the manager facade
and its services), `web` (API and pages), `client` (used only by `cui`).
"""
