"""The validator set and the one quorum rule every certificate in Bayledger uses."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from . import codec

JURISDICTIONS = ("HK", "CN")


class ValidatorSetError(ValueError):
    """A validator set that cannot run safely (the message says why)."""


@dataclass(frozen=True)
class Validator:
    id: str
    public_key: bytes
    jurisdiction: str

    def to_wire(self) -> dict:
        return {"id": self.id, "public_key": self.public_key, "jurisdiction": self.jurisdiction}


@dataclass(frozen=True)
class ValidatorSet:
    """Ordered validators (the order fixes the primary: view mod n) plus the jurisdiction rule.

    n validators tolerate f = (n - 1) // 3 Byzantine ones. A quorum is
    (n + f) // 2 + 1 distinct validators (= 2f + 1 when n = 3f + 1) that
    include at least `min_signers_per_jurisdiction` from every jurisdiction
    present in the set.
    """

    validators: tuple[Validator, ...]
    min_signers_per_jurisdiction: int = 1
    _by_id: dict = field(init=False, repr=False, compare=False)
    _hash: bytes = field(init=False, repr=False, compare=False, default=b"")

    def __post_init__(self) -> None:
        if not self.validators:
            raise ValidatorSetError("validator set is empty")
        if self.min_signers_per_jurisdiction < 0:
            raise ValidatorSetError("min_signers_per_jurisdiction must be >= 0")
        by_id: dict[str, tuple[int, Validator]] = {}
        keys: set[bytes] = set()
        for index, v in enumerate(self.validators):
            if not isinstance(v.id, str) or not v.id:
                raise ValidatorSetError(f"validator #{index} has no id")
            if v.id in by_id:
                raise ValidatorSetError(f"validator id {v.id!r} appears twice")
            if not isinstance(v.public_key, bytes) or len(v.public_key) != codec.PUBLIC_KEY_BYTES:
                raise ValidatorSetError(f"validator {v.id!r}: public key must be 32 bytes")
            if v.public_key in keys:
                raise ValidatorSetError(f"validator {v.id!r}: public key used twice")
            if v.jurisdiction not in JURISDICTIONS:
                raise ValidatorSetError(
                    f"validator {v.id!r}: jurisdiction {v.jurisdiction!r} is not one of {', '.join(JURISDICTIONS)}"
                )
            by_id[v.id] = (index, v)
            keys.add(v.public_key)
        object.__setattr__(self, "_by_id", by_id)
        need = self.min_signers_per_jurisdiction + self.f
        for jurisdiction, count in sorted(self.jurisdiction_sizes.items()):
            if count < need:
                raise ValidatorSetError(
                    f"jurisdiction {jurisdiction} has {count} validators but needs at least "
                    f"min_signers_per_jurisdiction + f = {self.min_signers_per_jurisdiction} + {self.f} = {need}: "
                    f"{self.f} faulty validators there could halt the chain"
                )

    @property
    def n(self) -> int:
        return len(self.validators)

    @property
    def f(self) -> int:
        return (self.n - 1) // 3

    @property
    def quorum_size(self) -> int:
        return (self.n + self.f) // 2 + 1

    @property
    def jurisdiction_sizes(self) -> dict[str, int]:
        return dict(Counter(v.jurisdiction for v in self.validators))

    def get(self, validator_id: str) -> Validator | None:
        entry = self._by_id.get(validator_id)
        return entry[1] if entry else None

    def __contains__(self, validator_id: object) -> bool:
        return validator_id in self._by_id

    def primary(self, view: int) -> Validator:
        return self.validators[view % self.n]

    def is_quorum(self, signer_ids: Iterable[str]) -> bool:
        """The quorum rule. Unknown ids are ignored; duplicates count once."""
        signers = {s for s in signer_ids if s in self._by_id}
        if len(signers) < self.quorum_size:
            return False
        per_jurisdiction = Counter(self._by_id[s][1].jurisdiction for s in signers)
        return all(
            per_jurisdiction[j] >= self.min_signers_per_jurisdiction for j in self.jurisdiction_sizes
        )

    def to_wire(self) -> dict:
        return {
            "validators": [v.to_wire() for v in self.validators],
            "min_signers_per_jurisdiction": self.min_signers_per_jurisdiction,
        }

    @classmethod
    def from_wire(cls, wire: dict) -> "ValidatorSet":
        try:
            validators = tuple(
                Validator(id=v["id"], public_key=v["public_key"], jurisdiction=v["jurisdiction"])
                for v in wire["validators"]
            )
            minimum = wire.get("min_signers_per_jurisdiction", 1)
        except (KeyError, TypeError) as exc:
            raise ValidatorSetError(f"malformed validator set: {exc}") from exc
        if not isinstance(minimum, int) or isinstance(minimum, bool):
            raise ValidatorSetError("min_signers_per_jurisdiction must be an integer")
        return cls(validators=validators, min_signers_per_jurisdiction=minimum)

    def hash(self) -> bytes:
        """SHA-256 of the canonical msgpack of `to_wire()`; carried in every header."""
        if not self._hash:  # computed once: the set is immutable and every header check asks
            object.__setattr__(self, "_hash", codec.sha256(codec.pack(self.to_wire())))
        return self._hash
