"""Ed25519 key files: JSON with the hex seed and public key, readable by the owner only.

    {"type": "ed25519", "id": "hk-1", "public_key": "<64 hex>", "seed": "<64 hex>"}

The public key is stored next to the seed so a copied or edited file whose two
halves do not belong together is caught on load, not at the first signature.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import nacl.signing

SEED_BYTES = 32
KEY_FILE_BYTES_MAX = 4096
KEY_FILE_MODE = 0o600


class KeyFileError(ValueError):
    """A key file that is missing, malformed, mismatched or readable by others."""


@dataclass(frozen=True)
class KeyPair:
    signing_key: nacl.signing.SigningKey
    id: str | None = None

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @classmethod
    def generate(cls, key_id: str | None = None) -> "KeyPair":
        return cls(signing_key=nacl.signing.SigningKey.generate(), id=key_id)


def create_private_file(path: str | Path, data: bytes, mode: int, *, overwrite: bool = False) -> None:
    """Write `data` to a file created with `mode` (never readable by others, not even briefly), synced.
    Raises FileExistsError (unless overwrite) or OSError for the caller to word."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(path, flags, mode)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), mode)   # an existing file overwritten keeps its old mode otherwise
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def write_key_file(path: str | Path, key: KeyPair, *, overwrite: bool = False) -> None:
    """Write `key` with mode 0600, created that way (never world-readable, not even briefly)."""
    path = Path(path)
    document = {"type": "ed25519", "public_key": key.public_key.hex(), "seed": bytes(key.signing_key).hex()}
    if key.id is not None:
        document["id"] = key.id
    try:
        create_private_file(path, (json.dumps(document, indent=2) + "\n").encode(), KEY_FILE_MODE,
                            overwrite=overwrite)
    except FileExistsError:
        raise KeyFileError(f"key file {path} already exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise KeyFileError(f"key file {path} cannot be created: {exc.strerror}") from None


def _hex_field(document: dict, name: str, path: Path, size: int) -> bytes:
    value = document.get(name)
    if not isinstance(value, str):
        raise KeyFileError(f"key file {path}: field {name!r} is missing or not a string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise KeyFileError(f"key file {path}: field {name!r} is not hex") from None
    if len(raw) != size:
        raise KeyFileError(f"key file {path}: field {name!r} must be {size} bytes, got {len(raw)}")
    return raw


def load_key_file(path: str | Path, *, check_mode: bool = True) -> KeyPair:
    """Load a key file written by `write_key_file`; raise KeyFileError saying what is wrong."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"key file {path} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise KeyFileError(f"key file {path} is not a regular file")
    if check_mode and info.st_mode & 0o077:
        raise KeyFileError(
            f"key file {path} has mode {stat.S_IMODE(info.st_mode):04o}; it must be readable by "
            f"its owner only (chmod 600 {path})"
        )
    if info.st_size > KEY_FILE_BYTES_MAX:
        raise KeyFileError(f"key file {path} is {info.st_size} bytes, above the {KEY_FILE_BYTES_MAX} limit")
    try:
        document = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise KeyFileError(f"key file {path} is not JSON: {type(exc).__name__}: {str(exc)[:200]}") from None
    except OSError as exc:
        raise KeyFileError(f"key file {path} cannot be read: {exc.strerror}") from None
    if not isinstance(document, dict):
        raise KeyFileError(f"key file {path} must hold a JSON object")
    if document.get("type", "ed25519") != "ed25519":
        raise KeyFileError(f"key file {path}: type {document.get('type')!r} is not ed25519")
    seed = _hex_field(document, "seed", path, SEED_BYTES)
    public_key = _hex_field(document, "public_key", path, 32)
    signing_key = nacl.signing.SigningKey(seed)
    if bytes(signing_key.verify_key) != public_key:
        raise KeyFileError(f"key file {path}: public_key does not belong to the seed")
    key_id = document.get("id")
    if key_id is not None and not isinstance(key_id, str):
        raise KeyFileError(f"key file {path}: field 'id' must be a string")
    return KeyPair(signing_key=signing_key, id=key_id)


def load_public_key(text: str) -> bytes:
    """A public key given as 64 hex characters or as the path of a key file (public half only read)."""
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) == 32:
        return raw
    path = Path(text)
    if not path.exists():
        raise KeyFileError(f"{text!r} is neither 64 hex characters nor an existing key file")
    try:
        document = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise KeyFileError(f"key file {path} cannot be read as JSON: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(document, dict):
        raise KeyFileError(f"key file {path} must hold a JSON object")
    return _hex_field(document, "public_key", path, 32)
