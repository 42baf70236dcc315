"""Bayledger consensus layer."""
