"""Writers and readers of the spine dataset layouts (TotalSegmentator, VerSe, plain NIfTI).

Writers take phantoms or (CT, canonical label map) pairs and lay them out as the public dataset
does, so that training and evaluation code reads synthetic and real data the same way. Readers
yield one case at a time, with labels in the canonical (VerSe) scheme, and report bad input
with the case id and the file: NiftiInputError, GeometryMismatchError, LabelError.
"""

from spinecloud_shared.layouts._common import LabelledCase
from spinecloud_shared.layouts.plain import PlainCase, read_plain, write_plain
from spinecloud_shared.layouts.totalsegmentator import (
    TotalSegCase,
    read_meta,
    read_totalsegmentator,
    write_totalsegmentator,
)
from spinecloud_shared.layouts.verse import VerseCase, read_verse, write_verse

__all__ = [
    "LabelledCase",
    "PlainCase",
    "TotalSegCase",
    "VerseCase",
    "read_meta",
    "read_plain",
    "read_totalsegmentator",
    "read_verse",
    "write_plain",
    "write_totalsegmentator",
    "write_verse",
]
