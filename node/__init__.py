"""Bayledger node layer."""
