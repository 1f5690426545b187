"""The error an admin can fix: `AdminError`, shared by the CLI, the generation service and backups.

Its own module, at the bottom of the game's layers, so the store's backup code
and the generation service can raise it without importing each other or the CLI;
the CLI shows the message in red on stderr and exits 1.
"""
from __future__ import annotations


class AdminError(RuntimeError):
    """Something an admin can fix; the message says what and how."""
