"""The labelled routing corpus under ``data/routing/``: loading it and splitting it.

The corpus is project-written text (``data/routing/prompts/*.jsonl``), labelled by the policy in
``data/routing/POLICY.md`` with the smallest tier that answers each prompt well. The shipped
examples (``examples/requests.jsonl``) are labelled by the same policy in
``data/routing/examples.jsonl``.

The held-out split is deterministic, independent of file order and stable as prompts are added:
a prompt is held out when the SHA-256 of its id, read as a number, is divisible by
:data:`HOLDOUT_EVERY` (about 25 %, and about that share of every domain and tier at this size).
The learned router is trained on the rest only, so the held-out split measures prompts it never
saw.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, Field

from core.models import TaskType, Tier
from core.settings import PROJECT_ROOT

CORPUS_DIR = PROJECT_ROOT / "data" / "routing"
"""Where the corpus, its policy and its data card live in a checkout."""

HOLDOUT_EVERY = 4
"""About one prompt in this many is held out: a 25 % held-out split."""


class LabelledPrompt(BaseModel):
    """One corpus line.

    Attributes:
        id: unique, stable id (``wr-001``); the split depends on it.
        prompt: the prompt text.
        domain: its subject area (``math``, ``coding``, ``extraction``, ...).
        task_type: the seed's task class.
        tier: the smallest tier that answers it well (the label).
        why: the policy rule that decided the label.
    """

    id: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    domain: str
    task_type: TaskType
    tier: Tier
    why: str = ""


class LabelledExample(BaseModel):
    """A label for one line of ``examples/requests.jsonl`` (``line`` is 1-based)."""

    line: int = Field(ge=1)
    query: str
    task_type: TaskType
    tier: Tier
    why: str = ""


def _read_jsonl(path: Path) -> Iterable[tuple[int, dict[str, object]]]:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            yield number, json.loads(line)


def load_corpus(root: Path = CORPUS_DIR) -> list[LabelledPrompt]:
    """Every labelled prompt under ``root/prompts``, in file-name then line order.

    Raises:
        ValueError: a line does not validate, or two prompts share an id (the message names the
            file and line).
    """
    prompts: list[LabelledPrompt] = []
    seen: set[str] = set()
    for path in sorted((root / "prompts").glob("*.jsonl")):
        for number, raw in _read_jsonl(path):
            try:
                item = LabelledPrompt.model_validate(raw)
            except ValueError as exc:
                raise ValueError(f"{path.name}:{number}: {exc}") from exc
            if item.id in seen:
                raise ValueError(f"{path.name}:{number}: duplicate id {item.id!r}")
            seen.add(item.id)
            prompts.append(item)
    return prompts


def load_examples(root: Path = CORPUS_DIR) -> list[LabelledExample]:
    """The labels of the shipped examples, in line order."""
    return [LabelledExample.model_validate(raw) for _, raw in _read_jsonl(root / "examples.jsonl")]


def is_held_out(prompt_id: str) -> bool:
    """Whether the prompt with this id belongs to the held-out split (see the module docstring)."""
    return int(hashlib.sha256(prompt_id.encode()).hexdigest(), 16) % HOLDOUT_EVERY == 0


def split_corpus(
    prompts: list[LabelledPrompt],
) -> tuple[list[LabelledPrompt], list[LabelledPrompt]]:
    """The (train, held-out) split (see the module docstring); both keep the corpus order."""
    return (
        [p for p in prompts if not is_held_out(p.id)],
        [p for p in prompts if is_held_out(p.id)],
    )


def corpus_digest(prompts: Iterable[LabelledPrompt]) -> str:
    """SHA-256 of the prompts' canonical JSON, in order (identifies a training set)."""
    digest = hashlib.sha256()
    for item in prompts:
        digest.update(item.model_dump_json().encode())
        digest.update(b"\n")
    return digest.hexdigest()
