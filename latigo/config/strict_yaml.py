"""PyYAML's safe loader made strict enough for a configuration file.

PyYAML keeps the last of two equal keys silently, so a section written twice loses the first;
it nests as deep as the stack goes and expands aliases of aliases without limit ("billion
laughs"); and a scalar no constructor can read escapes as a bare ValueError. This loader turns
each of those into a YAML error with its line, which the file reader reports like any other.
"""

from __future__ import annotations

from typing import Any

import yaml

# deepest nesting of mappings and lists in the file (Latigo's own keys go 3 deep); deeper
# documents are refused before they exhaust the parser's stack
MAX_YAML_DEPTH = 20
# most values the file may expand to, an alias counted at each use ("billion laughs")
MAX_YAML_NODES = 10_000


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter. A key written twice in one mapping is an error that
    names the key and both lines: PyYAML keeps the last one silently, so a section written
    twice loses the first. Nesting deeper than MAX_YAML_DEPTH and documents that expand to
    more than MAX_YAML_NODES values (aliases of aliases) are refused before they exhaust the
    stack or the memory. A scalar no constructor can read (a 13th month, an int of 5000
    digits) is a YAML error with its line, not a bare ValueError."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", self.peek_event().start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node: yaml.Node) -> Any:
        self._check(node)
        return super().construct_document(node)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, OverflowError, ArithmeticError):
            kind = node.tag.rsplit(":", 1)[-1]
            raise yaml.constructor.ConstructorError(
                None, None, f"this value cannot be read as {kind}", node.start_mark
            ) from None

    def _check(self, root: yaml.Node) -> None:
        visited = 0
        todo: list[tuple[yaml.Node, tuple[str, ...]]] = [(root, ())]
        while todo:
            node, path = todo.pop()
            visited += 1
            if visited > MAX_YAML_NODES:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"the document expands to more than {MAX_YAML_NODES} values (an alias counts at each use)",
                    root.start_mark,
                )
            if len(path) > MAX_YAML_DEPTH:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"nested deeper than {MAX_YAML_DEPTH} levels (through aliases)",
                    node.start_mark,
                )
            if isinstance(node, yaml.SequenceNode):
                todo.extend((item, (*path, f"[{index}]")) for index, item in enumerate(node.value))
            elif isinstance(node, yaml.MappingNode):
                first_lines: dict[Any, int] = {}
                for key_node, value_node in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                        # merged mappings may repeat keys (that is what they are for)
                        todo.append((value_node, path))
                        todo.append((key_node, path))
                        continue
                    key = self.construct_object(key_node)
                    todo.append((value_node, (*path, str(key))))
                    identity = (type(key).__name__, key) if _hashable(key) else (key_node.tag, key_node.value)
                    line = key_node.start_mark.line + 1
                    if identity in first_lines:
                        name = ".".join((*path, str(key))).replace(".[", "[")
                        raise yaml.constructor.ConstructorError(
                            None,
                            None,
                            f"{name} appears twice (first on line {first_lines[identity]}): a key may appear "
                            "once in a mapping, or the last one would silently win",
                            key_node.start_mark,
                        )
                    first_lines[identity] = line
