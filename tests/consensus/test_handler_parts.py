"""Replica's handler modules (consensus/handlers/) are parts of one class: a method defined in two of them
(or in one of them and in replica.py) would silently shadow the other, by inheritance order."""

import collections
import inspect

from consensus.replica import Replica


def test_no_method_is_defined_in_two_parts_of_the_replica():
    parts = [cls for cls in Replica.__mro__ if cls is not object]
    assert len(parts) >= 9   # Replica and its eight handler classes
    where = collections.defaultdict(list)
    for cls in parts:
        for name, value in vars(cls).items():
            if inspect.isfunction(value) or isinstance(value, property):
                where[name].append(cls.__name__)
    assert {name: owners for name, owners in where.items() if len(owners) > 1} == {}


def test_the_handler_parts_hold_no_state_of_their_own():
    """The state lives in Replica.__init__ and its state objects; a handler class holds only methods."""
    for cls in Replica.__mro__[1:-1]:
        assert cls.__module__.startswith("consensus.handlers.")
        fields = {name for name, value in vars(cls).items()
                  if not name.startswith("__") and not inspect.isfunction(value)}
        assert fields == set(), cls.__name__
