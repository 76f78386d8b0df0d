"""Deliberately broken adapters that prove the suite can fail."""
