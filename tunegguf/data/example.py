"""The one record type every stage reads: a classification or an instruction example."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Example:
    """One row of a frozen split.

    Classification rows set `text` and `label` (the class name, never a raw value).
    Instruction rows set `instruction`, optionally `input`, and `output`.
    `id` is stable across stages so predictions from both backends can be paired.
    """

    id: str
    text: str | None = None
    label: str | None = None
    instruction: str | None = None
    input: str | None = None
    output: str | None = None

    @property
    def is_classification(self) -> bool:
        return self.text is not None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "Example":
        return cls(**{k: row.get(k) for k in cls.__dataclass_fields__})
