"""A rich table that lays out one-line cells itself.

rich's :class:`~rich.table.Table` measures, wraps and justifies every cell
through its general text machinery, about half a millisecond a row: a
64-worker ``show`` spent more time there than in reading the files.  Most
of our tables hold short one-line cells that fit the terminal, so
:class:`Grid` lays those out directly, in the same look as the rich table
it stands for (the ``SIMPLE`` box without edges, no padding, a space
between columns).  When a cell spans lines or the table is wider than the
terminal, it hands the whole table to rich, which shrinks and folds the
text columns.
"""

from __future__ import annotations

import itertools
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
    ) -> None:
        """Add a column (the arguments mean what they mean to rich)."""
        self.columns.append(GridColumn(header, justify, no_wrap, min_width, overflow))

    def add_row(self, *cells: Cell) -> None:
        """Add a row of one cell per column."""
        if len(cells) != len(self.columns):
            raise ValueError(f"a row of {len(cells)} cells for {len(self.columns)}")
        self.rows.append(cells)

    @property
    def row_count(self) -> int:
        return len(self.rows)

    def __rich_console__(
        self, console: Console, options: ConsoleOptions
    ) -> RenderResult:
        widths = self._widths(options.max_width)
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
        for i, column in enumerate(self.columns):
            cells: list[Cell] = [column.header, *(row[i] for row in self.rows)]
            if self.show_footer:
                cells.append(column.footer)
            width = column.min_width or 0
            for cell in cells:
                plain = cell.plain if isinstance(cell, Text) else cell
                if "\n" in plain:
                    return None
                size = len(plain) if plain.isascii() else cell_len(plain)
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


def _row(
    cells: Iterable[Cell], widths: list[int], justify: list[str], style: Style | None
) -> Iterator[Segment]:
    parts: list[Segment] = []
    plain = True
    for i, (cell, width) in enumerate(zip(cells, widths, strict=True)):
        if isinstance(cell, Text):
            text = cell.plain
            styled = bool(cell.spans or cell.style)
        else:
            text, styled = cell, False
        size = len(text) if text.isascii() else cell_len(text)
        gap = " " * (width - size)
        sep = " " if i else ""
        if styled:
            assert isinstance(cell, Text)
            plain = False
            left, right = (gap, "") if justify[i] == "right" else ("", gap)
            parts.append(Segment(sep + left, style))
            for span_text, span_style in _styled(cell):
                parts.append(Segment(span_text, _combine(style, span_style)))
            parts.append(Segment(right, style))
        else:
            padded = gap + text if justify[i] == "right" else text + gap
            parts.append(Segment(sep + padded, style))
    if plain:
        yield Segment("".join(s.text for s in parts), style)
    else:
        yield from parts
    yield Segment.line()


def _styled(text: Text) -> Iterator[tuple[str, Style | str | None]]:
    """Yield the pieces of a one-line Text with the style of each."""
    plain = text.plain
    base = text.style or None
    if not text.spans:
        yield plain, base
        return
    # Split at every span boundary; each piece takes the base style and
    # the styles of the spans over it, in order.
    cuts = sorted(
        {0, len(plain), *(s.start for s in text.spans), *(s.end for s in text.spans)}
    )
    for start, end in itertools.pairwise(cuts):
        if start >= end:
            continue
        styles = [base] + [
            s.style for s in text.spans if s.start <= start and s.end >= end
        ]
        yield plain[start:end], _merge(styles)


def _merge(styles: list[Style | str | None]) -> Style | None:
    out: Style | None = None
    for s in styles:
        if s:
            style = Style.parse(s) if isinstance(s, str) else s
            out = style if out is None else out + style
    return out


def _combine(a: Style | None, b: Style | str | None) -> Style | None:
    return _merge([a, b])


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
