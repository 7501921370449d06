"""Capture stage package (contract in a later commit)."""
