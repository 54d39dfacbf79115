"""Reading the README as a test runs it: its sections, their code blocks, the environment
`. .venv/bin/activate` gives."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def json_values(text: str) -> list[Any]:
    """Every JSON object printed, also when curl printed two without a newline between."""
    decoder, values, index = json.JSONDecoder(), [], 0
    while (index := text.find("{", index)) != -1:
        try:
            value, end = decoder.raw_decode(text, index)
        except json.JSONDecodeError:
            index += 1
            continue
        values.append(value)
        index = end
    return values


def shell_env() -> dict[str, str]:
    """The environment `. .venv/bin/activate` gives: the package's commands on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                PYTHONUNBUFFERED="1", EVENTSTREAMD_CONFIG="")
