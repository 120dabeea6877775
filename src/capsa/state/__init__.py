"""SQLite state: the one source of truth for everything the daemon knows."""

from capsa.state.db import Database

__all__ = ["Database"]
