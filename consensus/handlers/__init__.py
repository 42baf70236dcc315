"""The replica's handlers, one module per part of the protocol (see consensus/replica.py)."""
