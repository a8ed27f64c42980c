"""Transports: how the gateway reaches its backends (base.py: the ``Backend`` seam)."""
