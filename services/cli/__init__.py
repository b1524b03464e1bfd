"""The `tiergen` command."""
