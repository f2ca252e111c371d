"""The one record type every stage reads: a classification, instruction or chat example."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Example:
    """One row of a frozen split.

    Classification rows set `text` and `label` (the class name, never a raw value).
    Instruction rows set `instruction`, optionally `input`, and `output`.
    Chat rows set `messages`: the conversation in the OpenAI shape ({"role", "content"},
    roles system / user / assistant), normalized at load and ending with an assistant turn.
    `id` is stable across stages so predictions from both backends can be paired.
    """

    id: str
    text: str | None = None
    label: str | None = None
    instruction: str | None = None
    input: str | None = None
    output: str | None = None
    messages: list[dict[str, str]] | None = None

    @property
    def is_classification(self) -> bool:
        return self.text is not None

    @property
    def is_chat(self) -> bool:
        return self.messages is not None

    @property
    def last_assistant(self) -> int | None:
        """Index of the conversation's last assistant turn (the answer scored), or None."""
        for index in range(len(self.messages or ()) - 1, -1, -1):
            if self.messages[index]["role"] == "assistant":
                return index
        return None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "Example":
        values = {k: row.get(k) for k in cls.__dataclass_fields__}
        if values["messages"] is not None:
            values["messages"] = [{"role": m["role"], "content": m["content"]} for m in values["messages"]]
        return cls(**values)
