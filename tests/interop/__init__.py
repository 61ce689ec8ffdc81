"""Helpers for Livepeer interop tests (gateway stand-in, pytrickle scripts)."""
