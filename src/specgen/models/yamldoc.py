"""A YAML file read as plain data with the line of every node, so that each error names `file:line`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import SpecgenError
from ..fileio import read_regular


class RegistryError(SpecgenError):
    """models.yaml is not valid YAML or does not follow the schema."""


class YamlDoc:
    """A parsed YAML document as plain Python data, plus the line of every node."""

    MAX_NODES = 20_000
    """A models.yaml has tens of entries; more nodes than this means aliases multiplying (a "YAML bomb")."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.lines: dict[tuple, int] = {}
        self._nodes = 0
        self._open: set[int] = set()  # nodes being converted: meeting one again is an alias cycle
        loader = None
        try:
            loader = yaml.SafeLoader(text)  # checks every character: a NUL byte is refused here
            node = loader.get_single_node()
            self.data = {} if node is None else self._plain(loader, node, ())
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = mark.line + 1 if mark else 1
            what = e.problem or e.context or "invalid YAML"
            raise RegistryError(f"{path}:{line}: invalid YAML: {what}") from None
        except yaml.reader.ReaderError as e:
            line = text.count("\n", 0, e.position) + 1
            code = e.character if isinstance(e.character, int) else ord(e.character)
            raise RegistryError(f"{path}:{line}: invalid YAML: the control character U+{code:04X} is not "
                                "allowed in a YAML file") from None
        except yaml.YAMLError as e:
            raise RegistryError(f"{path}: invalid YAML: {e}") from None
        except RecursionError:
            raise RegistryError(f"{path}: invalid YAML: nested too deeply") from None
        finally:
            if loader is not None:
                loader.dispose()

    def _plain(self, loader: yaml.SafeLoader, node: yaml.Node, at: tuple) -> Any:
        # The composer shares one node among its aliases; converting to plain data copies it each
        # time, so nested aliases can multiply a small file into gigabytes.  Count and stop early.
        self._nodes += 1
        if self._nodes > self.MAX_NODES or id(node) in self._open:
            what = "refers to itself" if id(node) in self._open else \
                f"expands to more than {self.MAX_NODES} entries"
            raise RegistryError(f"{self.path}:{node.start_mark.line + 1}: the YAML anchor here {what} "
                                "through aliases (*name); write the entries out instead of aliasing them")
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            self._open.add(id(node))
            try:
                return self._plain_inner(loader, node, at)
            finally:
                self._open.discard(id(node))
        return self._plain_inner(loader, node, at)

    def _plain_inner(self, loader: yaml.SafeLoader, node: yaml.Node, at: tuple) -> Any:
        self.lines[at] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = loader.construct_object(key_node, deep=True) \
                    if isinstance(key_node, yaml.ScalarNode) else None
                if not isinstance(key, (str, int, float)) or isinstance(key, bool):
                    raise RegistryError(f"{self.path}:{key_node.start_mark.line + 1}: "
                                        f"{self.where(at)}keys must be plain names")
                key = str(key)
                if key in out:
                    raise RegistryError(f"{self.path}:{key_node.start_mark.line + 1}: "
                                        f"{self.where(at)}duplicate key {key!r}")
                out[key] = self._plain(loader, value_node, at + (key,))
                self.lines[at + (key,)] = key_node.start_mark.line + 1  # errors point at the key
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._plain(loader, v, at + (i,)) for i, v in enumerate(node.value)]
        return loader.construct_object(node, deep=True)

    @staticmethod
    def where(at: tuple) -> str:
        return ".".join(str(a) for a in at) + ": " if at else ""

    def line(self, at: tuple) -> int:
        while at and at not in self.lines:
            at = at[:-1]
        return self.lines.get(at, 1)

    def loc(self, at: tuple) -> str:
        return f"{self.path}:{self.line(at)}"

    def error(self, at: tuple, msg: str) -> RegistryError:
        return RegistryError(f"{self.loc(at)}: {self.where(at)}{msg}")


def read_doc(path: Path) -> YamlDoc:
    raw = read_regular(path, error=RegistryError)  # a pipe or device is refused, a missing file named
    try:
        return YamlDoc(path, raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise RegistryError(f"{path}: not UTF-8 text (byte {e.start})") from None
