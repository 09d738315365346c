"""The DICOMweb proxy's regrouping of upstream chunks: same bytes, bounded pieces."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from hypothesis import given
from hypothesis import strategies as st

from spinecloud_gateway.dicomweb.upstream import coalesced


async def _chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def _regroup(parts: list[bytes], size: int) -> list[bytes]:
    async def collect() -> list[bytes]:
        return [piece async for piece in coalesced(_chunks(parts), size)]

    return asyncio.run(collect())


@given(st.lists(st.binary(max_size=50), max_size=30), st.integers(min_value=1, max_value=120))
def test_pieces_keep_the_bytes_and_are_at_least_size_but_the_last(
    parts: list[bytes], size: int
) -> None:
    pieces = _regroup(parts, size)
    assert b"".join(pieces) == b"".join(parts)
    assert all(len(piece) >= size for piece in pieces[:-1])
    assert all(len(piece) < size + 50 for piece in pieces)  # one upstream chunk at most over


def test_nothing_in_nothing_out() -> None:
    assert _regroup([], 10) == []
    assert _regroup([b"", b""], 10) == []
