"""The one YAML loader of the project: yaml.SafeLoader, stricter in two ways.

- Duplicate keys in a mapping are refused (PyYAML keeps the last one silently, so a recipe with
  two `lr:` lines would run with whichever came last).
- Aliases (`*name`) are refused: expanding nested aliases can blow up memory (the "billion laughs"
  alias bomb), and no cell, recipe or reference table needs them.
"""
from __future__ import annotations

from pathlib import Path

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

from kd.errors import KDError


class StrictLoader(yaml.SafeLoader):
    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ComposerError(None, None, f"aliases are not allowed (*{event.anchor})", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    dup = key in seen
                    seen.add(key)
                except TypeError:      # an unhashable key: SafeLoader refuses it below
                    break
                if dup:
                    raise ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
        return super().construct_mapping(node, deep)


def loads(text: str, where: str):
    """Parse `text` (named `where` in errors); any YAML problem is one KDError line with its line."""
    try:
        return yaml.load(text, Loader=StrictLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise KDError(f"{where}{line}: malformed YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise KDError(f"{where}: malformed YAML: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    except RecursionError:
        raise KDError(f"{where}: malformed YAML: nested too deeply") from None


def read_text(path: Path) -> str:
    """The file as UTF-8 text; unreadable or non-UTF-8 files are one KDError line."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except OSError as e:
        raise KDError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise KDError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None


def load_file(path: Path):
    return loads(read_text(path), str(path))
