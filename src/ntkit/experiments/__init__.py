"""Experiments that tie finite networks to their infinite-width limits (each also a CLI command)."""
