"""Dataclasses that travel through checkpoints and JSON as plain dicts."""

from __future__ import annotations

from dataclasses import asdict, fields


class DictSerializable:
    """to_dict / from_dict for a dataclass; from_dict ignores keys it does not know (older or newer files)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
