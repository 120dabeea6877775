"""Map a path of keys in a YAML document to the line it starts on, for error messages."""

from __future__ import annotations

from collections.abc import Sequence

import yaml

__all__ = ["line_of"]


def line_of(root: yaml.Node | None, path: Sequence[str | int]) -> int | None:
    """1-based line of ``path`` (mapping keys and sequence indexes) in a composed document.

    Walks as far as the path exists and returns the line of the deepest node found, so
    an error about a missing key points at its parent.
    """
    node = root
    if node is None:
        return None
    line = node.start_mark.line + 1
    for key in path:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(key):
                    line, node = k.start_mark.line + 1, v
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line
