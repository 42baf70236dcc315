"""Bayledger testnet layer."""
