"""A trace's problems: `TraceError` lists every one found, with file, line and column."""

from __future__ import annotations

MAX_LISTED_PROBLEMS = 20
MAX_MESSAGE_CHARS = 240  # a problem's text is cut to this length


class TraceError(Exception):
    """A trace that cannot be used; `problems` lists every error found (file, line, column)."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        super().__init__("\n".join(problems))


class Problems:
    """Problems of one file, listed in line order, the first MAX_LISTED_PROBLEMS in full."""

    def __init__(self, name: str):
        self.name = name
        self.items: list[tuple[int, int, str]] = []  # (line, arrival order, text)

    @property
    def count(self) -> int:
        return len(self.items)

    def add(self, msg: str, line: int | None = None, column: str | None = None) -> None:
        if len(msg) > MAX_MESSAGE_CHARS:  # a value quoted whole could be the whole file
            msg = msg[: MAX_MESSAGE_CHARS - 3] + "..."
        if column is not None and len(column) > 80:
            column = column[:77] + "..."
        where = ", ".join(x for x in (line and f"line {line}", column and f"column {column}") if x)
        text = f"{self.name}: {where}: {msg}" if where else f"{self.name}: {msg}"
        self.items.append((line or 0, len(self.items), text))

    def fail(self, msg: str) -> TraceError:
        self.add(msg)
        return self.error()

    def error(self) -> TraceError:
        listed = [text for _, _, text in sorted(self.items)[:MAX_LISTED_PROBLEMS]]
        more = self.count - len(listed)
        return TraceError(self.name, listed + ([f"... and {more} more"] if more else []))

    def check(self) -> None:
        if self.items:
            raise self.error()
