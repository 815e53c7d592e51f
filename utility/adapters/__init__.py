"""Adapters: everything that touches the outside world.

SQLite, libvirt, disks, guests, repositories, CVL.
"""
