"""Chat rows: one cell's conversation (OpenAI or ShareGPT shape) to the OpenAI shape, checked.

Structural problems (the cell is not a list, a message is not an object or lacks its keys,
a role nobody knows) are the user's to fix and stop with one line naming the row; problems
with what a conversation says (no assistant turn, an empty message, a second system
message) drop the row, counted by reason in the data manifest, as other drops are.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tunegguf.errors import TuneGGUFError

# Both shapes' role names (ShareGPT's from: human / gpt, and exports that write user /
# assistant there too) to the OpenAI roles the renderer and every chat template know.
ROLES = {"system": "system", "user": "user", "assistant": "assistant", "human": "user", "gpt": "assistant"}
# (role key, content key) of the OpenAI and the ShareGPT shape.
SHAPES = (("role", "content"), ("from", "value"))
MESSAGE_COLUMNS = ("messages", "conversations")

# Drop reasons, as the manifest counts them, and the warning that explains each.
DROP_REASONS = {
    "no_assistant_turn": "no assistant turn (nothing to learn)",
    "empty_content": "a message with empty content",
    "two_system_messages": "more than one system message",
    "system_not_first": "a system message after the first turn",
}
TRAILING_CUT = "trailing_turns"
"""Counted under `truncated`: rows whose turns after the last assistant turn were cut."""


@dataclass(frozen=True)
class Conversation:
    messages: list[dict[str, str]]
    """The OpenAI-shaped messages, content stripped, cut after the last assistant turn."""
    drop: str | None = None
    """A DROP_REASONS key when the row cannot be trained on; messages are then as read."""
    cut: int = 0
    """Turns cut after the last assistant turn."""


def messages_column(columns: list[str], configured: str | None) -> str | None:
    """The column to read conversations from: data.messages_column, else the first of
    MESSAGE_COLUMNS present; None when none is there (the caller names the fix)."""
    if configured is not None:
        return configured if configured in columns else None
    return next((c for c in MESSAGE_COLUMNS if c in columns), None)


def _as_list(cell: Any, where: str) -> list[Any]:
    if isinstance(cell, str):
        # A conversation stored as JSON text (a CSV column, a stringified export).
        try:
            cell = json.loads(cell)
        except json.JSONDecodeError as exc:
            raise TuneGGUFError(
                f"{where}: the conversation is text but not valid JSON ({exc.msg}); "
                f"write a list of {{\"role\", \"content\"}} messages"
            ) from None
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        raise TuneGGUFError(f"{where}: no conversation; fill it in or remove the row")
    if hasattr(cell, "tolist") and not isinstance(cell, Mapping):
        cell = cell.tolist()  # Parquet gives a numpy array of dicts
    if isinstance(cell, tuple):
        cell = list(cell)
    if not isinstance(cell, list):
        raise TuneGGUFError(
            f"{where}: the conversation is {type(cell).__name__}, not a list of messages; "
            f"write [{{\"role\": \"user\", \"content\": ...}}, {{\"role\": \"assistant\", \"content\": ...}}]"
        )
    return cell


def _message(raw: Any, where: str, position: int) -> dict[str, str]:
    at = f"{where}, message {position + 1}"
    if not isinstance(raw, Mapping):
        raise TuneGGUFError(
            f"{at}: a {type(raw).__name__}, not a message object; write {{\"role\": ..., \"content\": ...}}"
        )
    for role_key, content_key in SHAPES:
        if role_key in raw:
            break
    else:
        keys = ", ".join(map(str, raw)) or "none"
        raise TuneGGUFError(
            f"{at}: no 'role' (OpenAI) or 'from' (ShareGPT) key (keys: {keys}); give each message its role"
        )
    if content_key not in raw:
        raise TuneGGUFError(
            f"{at}: has '{role_key}' but no '{content_key}' key; give each message its text as '{content_key}'"
        )
    name = str(raw[role_key]).strip()
    role = ROLES.get(name.lower())
    if role is None:
        raise TuneGGUFError(
            f"{at}: unknown role {raw[role_key]!r}; roles are system, user, assistant (ShareGPT: system, "
            f"human, gpt); map or remove those messages, or remove the row"
        )
    content = raw[content_key]
    if content is None or (isinstance(content, float) and math.isnan(content)):
        content = ""
    if not isinstance(content, str):
        raise TuneGGUFError(
            f"{at}: content is {type(content).__name__}, not text; write the message's text as a string"
        )
    return {"role": role, "content": content.strip()}


def normalize(cell: Any, where: str) -> Conversation:
    """One cell (a list of messages in either shape, or its JSON text) as a Conversation.

    `where` names the file, column and row for the one-line errors."""
    messages = [_message(raw, where, i) for i, raw in enumerate(_as_list(cell, where))]
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        return Conversation(messages, drop="no_assistant_turn")
    last = len(roles) - 1 - roles[::-1].index("assistant")
    # Turns after the last answer teach nothing (the loss is on assistant turns only), so
    # they are cut before the checks: an empty trailing user turn costs no row.
    cut = len(messages) - last - 1
    messages, roles = messages[: last + 1], roles[: last + 1]
    if any(not m["content"] for m in messages):
        return Conversation(messages, drop="empty_content")
    if roles.count("system") > 1:
        return Conversation(messages, drop="two_system_messages")
    if "system" in roles and roles[0] != "system":
        return Conversation(messages, drop="system_not_first")
    return Conversation(messages, cut=cut)


def conversation_length(messages: list[dict[str, str]]) -> int:
    """Characters of all the messages' content (what data.max_text_length caps)."""
    return sum(len(m["content"]) for m in messages)
