"""Checks of the project's models and losses against the official code they re-implement (README.md)."""
