"""Limits the features daemon is configured with (a uniquely named module: `conftest` is ambiguous on sys.path)."""

UPLOAD_MAX_FILE = 1 << 20
