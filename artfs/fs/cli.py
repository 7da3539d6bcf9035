"""`artfs mount` / `artfs umount` sub-commands."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register the filesystem commands on the main parser."""
