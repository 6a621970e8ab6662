"""A rich table that lays out one-line cells itself.

rich's :class:`~rich.table.Table` measures, wraps and justifies every cell
through its general text machinery, about half a millisecond a row: a
64-worker ``show`` spent more time there than in reading the files.  Most
of our tables hold short one-line cells that fit the terminal, so
:class:`Grid` lays those out directly, in the same look as the rich table
it stands for (the ``SIMPLE`` box without edges, no padding, a space
between columns).  When a cell spans lines or the table is wider than the
terminal, it hands the whole table to rich, which shrinks and folds the
text columns, and so it does for cells of styled text.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.segment import Segment
from rich.style import Style
from rich.table import Table
from rich.text import Text

Cell = str | Text
_BOLD = Style(bold=True)


@dataclass
class GridColumn:
    """A column: its header, footer, how it justifies and how it overflows."""

    header: str
    justify: str = "left"
    no_wrap: bool = False
    min_width: int | None = None
    overflow: str = "ellipsis"
    footer: Cell = ""
    # Left out when the table is wider than the terminal: the lowest first;
    # None: always shown.
    drop: int | None = None


class Grid:
    """A table with rich.Table's API for what our views use."""

    def __init__(
        self,
        title: str | Text | None = None,
        caption: str | None = None,
        show_footer: bool = False,
    ) -> None:
        self.title = title
        self.caption = caption
        self.show_footer = show_footer
        self.columns: list[GridColumn] = []
        self.rows: list[tuple[Cell, ...]] = []

    def add_column(
        self,
        header: str,
        *,
        justify: str = "left",
        no_wrap: bool = False,
        min_width: int | None = None,
        overflow: str = "ellipsis",
        drop: int | None = None,
    ) -> None:
        """Add a column (the arguments mean what they mean to rich; ``drop``
        orders the columns left out of a table too wide for the terminal)."""
        self.columns.append(
            GridColumn(header, justify, no_wrap, min_width, overflow, drop=drop)
        )

    def add_row(self, *cells: Cell) -> None:
        """Add a row of one cell per column."""
        if len(cells) != len(self.columns):
            raise ValueError(f"a row of {len(cells)} cells for {len(self.columns)}")
        self.rows.append(cells)

    @property
    def row_count(self) -> int:
        return len(self.rows)

    def fitted(self, max_width: int) -> Grid:
        """Return this table without the columns it must leave out to fit
        ``max_width``, the lowest ``drop`` first, and say so in its caption;
        itself when it fits or has nothing to leave out."""
        widths = self._natural_widths()
        over = sum(widths) + len(widths) - 1 - max_width
        droppable = sorted(
            (c.drop, i) for i, c in enumerate(self.columns) if c.drop is not None
        )
        if over <= 0 or not droppable:
            return self
        left_out: set[int] = set()
        for _, i in droppable:
            if over <= 0:
                break
            left_out.add(i)
            over -= widths[i] + 1
        keep = [i for i in range(len(self.columns)) if i not in left_out]
        names = ", ".join(self.columns[i].header for i in sorted(left_out))
        note = f"Left out to fit the width: {names}."
        grid = Grid(
            self.title,
            f"{self.caption} {note}" if self.caption else note,
            self.show_footer,
        )
        grid.columns = [self.columns[i] for i in keep]
        grid.rows = [tuple(row[i] for i in keep) for row in self.rows]
        return grid

    def _natural_widths(self) -> list[int]:
        """Return each column's width with its cells on one line each."""
        widths = []
        for column, cells in self._columns_cells():
            width = column.min_width or 0
            for cell in cells:
                plain = cell.plain if isinstance(cell, Text) else cell
                for line in plain.split("\n"):
                    width = max(width, _width(line))
            widths.append(width)
        return widths

    def _columns_cells(self) -> Iterator[tuple[GridColumn, list[Cell]]]:
        """Yield each column with its cells: header, rows, then footer."""
        for i, column in enumerate(self.columns):
            cells: list[Cell] = [column.header, *(row[i] for row in self.rows)]
            if self.show_footer:
                cells.append(column.footer)
            yield column, cells

    def __rich_console__(
        self, console: Console, options: ConsoleOptions
    ) -> RenderResult:
        widths = self._widths(options.max_width)
        if widths is None and any(c.drop is not None for c in self.columns):
            fitted = self.fitted(options.max_width)
            if fitted is not self:
                yield fitted
                return
        if widths is None:
            yield self.to_table()
            return
        width = sum(widths) + len(widths) - 1
        if self.title is not None:
            yield from _annotation(console, options, self.title, "table.title", width)
        yield from self._lines(widths)
        if self.caption is not None:
            yield from _annotation(
                console, options, self.caption, "table.caption", width
            )

    def _widths(self, max_width: int) -> list[int] | None:
        """Return the column widths, or None when rich must lay the table out."""
        widths = []
        for column, cells in self._columns_cells():
            width = column.min_width or 0
            for cell in cells:
                if isinstance(cell, Text):
                    if cell.style or cell.spans:
                        return None  # styled text: rich lays it out
                    plain = cell.plain
                else:
                    plain = cell
                if "\n" in plain or (
                    plain and (plain[0].isspace() or plain[-1].isspace())
                ):
                    return None  # rich lays out lines and edge spaces its way
                size = _width(plain)
                if size > width:
                    width = size
            widths.append(width)
        if not widths or sum(widths) + len(widths) - 1 > max_width:
            return None
        return widths

    def _lines(self, widths: list[int]) -> Iterator[Segment]:
        justify = [c.justify for c in self.columns]
        rule = "─" * (sum(widths) + len(widths) - 1)
        yield from _row([c.header for c in self.columns], widths, justify, _BOLD)
        yield Segment(rule)
        yield Segment.line()
        for row in self.rows:
            yield from _row(row, widths, justify, None)
        if self.show_footer:
            yield Segment(rule)
            yield Segment.line()
            yield from _row([c.footer for c in self.columns], widths, justify, _BOLD)

    def to_table(self) -> Table:
        """Return the same table as a rich Table."""
        table = Table(
            title=self.title,
            caption=self.caption,
            box=box.SIMPLE,
            show_edge=False,
            show_footer=self.show_footer,
            pad_edge=False,
            padding=(0, 0),
            title_justify="left",
            caption_justify="left",
            header_style="bold",
            footer_style="bold",
            highlight=False,
        )
        for c in self.columns:
            table.add_column(
                c.header,
                footer=c.footer,
                justify=c.justify,  # type: ignore[arg-type]
                no_wrap=c.no_wrap,
                min_width=c.min_width,
                overflow=c.overflow,  # type: ignore[arg-type]
            )
        for row in self.rows:
            table.add_row(*row)
        return table


def _width(text: str) -> int:
    """Return how many terminal cells ``text`` takes."""
    return len(text) if text.isascii() else cell_len(text)


def _row(
    cells: Iterable[Cell], widths: list[int], justify: list[str], style: Style | None
) -> Iterator[Segment]:
    """Yield one line: each cell padded to its column, a space between."""
    padded = []
    for cell, width, side in zip(cells, widths, justify, strict=True):
        text = cell.plain if isinstance(cell, Text) else cell
        gap = " " * (width - _width(text))
        padded.append(gap + text if side == "right" else text + gap)
    if style is None:
        yield Segment(" ".join(padded))
    else:  # as rich does: each cell styled, the spaces between not
        for i, text in enumerate(padded):
            if i:
                yield Segment(" ")
            yield Segment(text, style)
    yield Segment.line()


def _annotation(
    console: Console,
    options: ConsoleOptions,
    text: str | Text,
    style: str,
    width: int,
) -> Iterable[Segment]:
    """Return a title or caption laid out as rich does: at the table's width."""
    if isinstance(text, str):
        render: Text = console.render_str(text, style=style, highlight=False)
    else:
        render = text
    return console.render(
        render,
        options.update(width=width, justify="left", highlight=False, height=None),
    )
