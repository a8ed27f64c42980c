"""The phases of an exchange (one client request and its answer), in order.

The gateway moves an ``Exchange`` through them; the multiplexing routes read them to
know whether an answer has begun (``RELAYING``) or is over (``DONE``).  Kept apart so
both can import them without importing each other.
"""

__all__ = ["NEW", "WAIT_CONN", "WAIT_HEAD", "RELAYING", "DONE"]

NEW, WAIT_CONN, WAIT_HEAD, RELAYING, DONE = range(5)
