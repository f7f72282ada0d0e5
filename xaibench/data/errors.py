"""The one error a user sees for a missing or malformed dataset."""

from __future__ import annotations

from pathlib import Path


class DatasetNotFoundError(FileNotFoundError):
    """A dataset folder or file is missing or malformed.

    The message names the folder and files expected, where xaibench looked and
    how to get them; nothing is downloaded.
    """

    def __init__(
        self, name: str, looked_in: Path, expected: list[str], how_to_get: str, problem: str = ""
    ) -> None:
        files = "\n".join(f"    {looked_in / e}" for e in expected)
        detail = f"\n  problem: {problem}" if problem else ""
        super().__init__(
            f"dataset {name!r} not found or malformed.{detail}\n"
            f"  looked in: {looked_in}\n"
            f"  expected:\n{files}\n"
            f"  how to get it: {how_to_get}\n"
            f"  (set paths.data_dir=/path/to/data to look elsewhere; xaibench never downloads)"
        )
