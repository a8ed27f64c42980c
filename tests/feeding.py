"""Ways to feed an incremental parser: whole, one byte at a time, at random split points.

Every parser test goes through ``split_ways`` so a bug that only shows when a token is
cut between two ``feed`` calls cannot hide (h11 tests its parser the same way).
"""

from __future__ import annotations

import random

#: ids of the feeding modes, for ``pytest.mark.parametrize``.
MODES = ("whole", "bytewise", "random")


def random_chunks(data: bytes, rnd: random.Random, max_pieces: int = 12) -> list[bytes]:
    """Cut ``data`` at up to ``max_pieces - 1`` random points (some pieces may be empty)."""
    if not data:
        return [data]
    cuts = sorted(rnd.randrange(0, len(data) + 1) for _ in range(rnd.randrange(1, max_pieces)))
    pieces, prev = [], 0
    for cut in cuts:
        pieces.append(data[prev:cut])
        prev = cut
    pieces.append(data[prev:])
    return pieces


def split_ways(data: bytes, mode: str, seed: int = 0) -> list[bytes]:
    """The pieces ``data`` is fed in for one feeding mode."""
    if mode == "whole":
        return [data]
    if mode == "bytewise":
        return [data[i : i + 1] for i in range(len(data))]
    if mode == "random":
        return random_chunks(data, random.Random(seed ^ len(data)))
    raise ValueError(mode)
