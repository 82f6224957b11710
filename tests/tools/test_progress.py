"""The progress bar is drawn on a terminal only; the summary line is always printed."""

from __future__ import annotations

import io

from service.tools.progress import Progress, human_bytes, summary


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_is_drawn_only_on_a_terminal() -> None:
    pipe = io.StringIO()
    with Progress("scanning", 1000, stream=pipe, show_after=0) as progress:
        progress.advance(500)
    assert pipe.getvalue() == ""

    tty = Terminal()
    with Progress("scanning", 1000, stream=tty, show_after=0) as progress:
        progress.advance(500)
        drawn = tty.getvalue()
    assert drawn.startswith("\rscanning [")
    assert " 50% 500 B / 1000 B" in drawn
    assert tty.getvalue().endswith("\r\x1b[K")  # erased: the summary line takes its place


def test_the_progress_bar_waits_before_it_appears_and_counts_records() -> None:
    tty = Terminal()
    progress = Progress("reading", 10, unit="records", stream=tty, show_after=60)
    progress.advance(5)
    assert tty.getvalue() == ""  # work that ends within the delay never flickers
    progress.draw()
    assert "5 / 10 records" in tty.getvalue()
    progress.close()


def test_the_summary_line_goes_to_the_stream_even_when_it_is_not_a_terminal() -> None:
    pipe = io.StringIO()
    summary("verify: clean", pipe)
    assert pipe.getvalue() == "verify: clean\n"


def test_byte_counts_read_in_binary_units() -> None:
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(64 * 1024 * 1024) == "64.0 MiB"
