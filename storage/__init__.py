"""Bayledger storage layer."""
