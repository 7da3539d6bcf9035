"""Sizes as a person reads them, the same in the CLI and the web UI."""

from __future__ import annotations


def human(n: int) -> str:
    """`512 B`, `1.5 MiB`: binary units, one decimal above bytes."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
