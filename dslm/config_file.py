"""Reading the YAML and JSON files people give dslm (--config, --data_spec): one-line errors that name
the flag, the file and the line, and a key given twice refused (both parsers would keep the last)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from dslm.errors import ConfigError, first_line


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice (PyYAML would keep the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"{key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    twice = next((k for k in keys if keys.count(k) > 1), None)
    if twice is not None:
        raise ValueError(f"{twice!r} is given twice")
    return dict(pairs)


def parse(path: str, flag: str, what: str) -> Any:
    """The content of a .json file as JSON, of any other as YAML (a superset of JSON). `what` names the file's
    kind in the errors ("data spec")."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{flag} {path}: no such file; give a YAML or JSON {what}")
    try:
        text = p.read_text(encoding="utf-8")
        if p.suffix.lower() == ".json":
            return json.loads(text, object_pairs_hook=_no_duplicates)
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{flag} {path} cannot be read ({first_line(exc)}): check the file") from None
    except (ValueError, yaml.YAMLError) as exc:
        kind = "JSON" if p.suffix.lower() == ".json" else "YAML"
        mark = getattr(exc, "problem_mark", None)  # PyYAML's messages span lines: the line and the problem
        detail = (f"line {mark.line + 1}: {exc.problem}" if mark is not None and getattr(exc, "problem", None)
                  else " ".join(first_line(exc, 400).split()))
        raise ConfigError(f"{flag} {path} is not valid {kind} ({detail}): fix the file") from None
