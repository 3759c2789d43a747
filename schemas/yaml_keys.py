"""Keys given twice in a hand-written YAML file (the config, a mapping file).

YAML keeps the last of two equal keys without a word: a second `NEW: closed` in a mapping's
status table, or a second `description:` among its fields, would replace the first unseen.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import yaml

#: A field's place in the file: keys and list indexes from the top.
Location = tuple[int | str, ...]


@dataclass(frozen=True)
class RepeatedKey:
    """A key given a second time in one mapping, located at the second."""

    line: int
    path: Location  # to the key, the key last
    first_line: int

    @property
    def key(self) -> str:
        return str(self.path[-1])

    def __str__(self) -> str:
        where = ".".join(str(p) for p in self.path)
        return f"{where}: {self.key!r} is given twice (first on line {self.first_line})"


def repeated_keys(node: yaml.Node | None, loc: Location = ()) -> Iterator[RepeatedKey]:
    """Each key given twice in one mapping of the composed document `node`, in file order."""
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            # Merge keys (`<<: *base`) may repeat, and their anchor was checked where it stands.
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            line = key.start_mark.line + 1
            path = (*loc, key.value)
            if key.value in first:
                yield RepeatedKey(line, path, first[key.value])
            first.setdefault(key.value, line)
            yield from repeated_keys(value, path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from repeated_keys(item, (*loc, i))
