"""The report of a benchmark run: each scenario hands over a Section (its table, the figures
checked against their targets, the plots to draw); this renders the summary of targets, the
markdown file and its PNG plots."""

from __future__ import annotations

import datetime
import math
import os
import platform
import subprocess
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.axis import Axis

HERE = Path(__file__).parent


@dataclass(frozen=True)
class Check:
    """One figure of the summary: what was measured, against which target (if any)."""

    figure: str
    measured: str
    target: str = "-"
    met: bool | None = None  # None: reported, no target

    @property
    def verdict(self) -> str:
        return {True: "met", False: "MISSED", None: "-"}[self.met]


def at_most(figure: str, value: float, bound: float, fmt: str = "{:.2f}x") -> Check:
    return Check(figure, fmt.format(value), "<= " + fmt.format(bound), value <= bound)


def at_least(figure: str, value: float, bound: float, fmt: str = "{:.2f}x") -> Check:
    return Check(figure, fmt.format(value), ">= " + fmt.format(bound), value >= bound)


def info(figure: str, measured: str) -> Check:
    return Check(figure, measured)


@dataclass(frozen=True)
class Bars:
    """Grouped bars: one bar per series in each group."""

    name: str  # in the file name: <stem>-<name>.png
    title: str
    ylabel: str
    groups: Sequence[str]
    series: dict[str, list[float]]
    log: bool = False


@dataclass(frozen=True)
class Cdf:
    """Cumulative distribution of samples, one line per series (log x axis)."""

    name: str
    title: str
    xlabel: str
    series: dict[str, list[float]]


Plot = Bars | Cdf


@dataclass(frozen=True)
class Section:
    scenario: str  # its name on the command line: python3 -m bench <scenario>
    title: str
    table: str  # markdown
    checks: list[Check] = field(default_factory=list)
    plots: tuple[Plot, ...] = ()
    seconds: float | None = None  # how long the scenario took (None: not a run of its own)


def failed(scenario: str, error: BaseException) -> Section:
    """The section of a scenario that raised: the error where its table would be."""
    text = "".join(traceback.format_exception_only(error)).strip()
    return Section(
        scenario,
        f"{scenario}: failed",
        f"```\n{text}\n```",
        [Check("the scenario ran", "no: " + text.splitlines()[-1], "yes", False)],
    )


def number(value: float) -> str:
    """A measured value for a table or a bar: whole numbers without decimals."""
    if float(value).is_integer() or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.2f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table padded into columns, readable as plain text too."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def summary(sections: Sequence[Section]) -> str:
    rows = [
        [s.scenario, c.figure, c.measured, c.target, c.verdict] for s in sections for c in s.checks
    ]
    return table(["scenario", "figure", "measured", "target", "met"], rows)


def _machine() -> str:
    cores = os.cpu_count()
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return (
        f"{cores} cores ({model}), {memory_kib / 1024**2:.1f} GiB memory, "
        f"Linux {platform.release()}, Python {platform.python_version()}"
    )


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(HERE), *args], capture_output=True, text=True, check=False
        ).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" with uncommitted changes" if git("status", "--porcelain") else "")


@dataclass(frozen=True)
class Run:
    """What the header says about the run as a whole."""

    command: str
    started: datetime.datetime
    load: str  # /proc/loadavg at the start: the machine is shared
    commit: str  # taken at the start, before this run rewrites its own report

    @classmethod
    def begin(cls, command: str) -> Run:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        return cls(command, datetime.datetime.now(), load, _commit())


def _duration(seconds: float) -> str:
    return f"{int(seconds // 60)}m {seconds % 60:02.0f}s"


def image_name(stem: str, plot: Plot) -> str:
    return f"{stem}-{plot.name}.png"


def markdown(run: Run, sections: Sequence[Section], stem: str) -> str:
    took = (datetime.datetime.now() - run.started).total_seconds()
    parts = [
        f"# Measurements, {run.started.date().isoformat()}",
        f"- command: `{run.command}`\n"
        f"- machine: {_machine()}\n"
        f"- load average at the start: {run.load}\n"
        f"- commit: {run.commit}\n"
        f"- started {run.started:%H:%M:%S}, took {_duration(took)}",
        "Absolute times vary with the machine's load; the ratios within one run are the "
        "figures to read.",
        "## Summary",
        summary(sections),
    ]
    for s in sections:
        took = "" if s.seconds is None else f" (took {_duration(s.seconds)})"
        parts += [f"## {s.title}", f"`python3 -m bench {s.scenario}`{took}", s.table]
        parts += [f"![{p.title}]({image_name(stem, p)})" for p in s.plots]
    return "\n\n".join(parts) + "\n"


def write(run: Run, sections: Sequence[Section], directory: Path, stem: str) -> Path:
    """`<directory>/<stem>.md` and a `<stem>-<plot>.png` per plot; returns the markdown path."""
    directory.mkdir(parents=True, exist_ok=True)
    for s in sections:
        for plot in s.plots:
            draw(plot, directory / image_name(stem, plot))
    path = directory / f"{stem}.md"
    path.write_text(markdown(run, sections, stem))
    return path


def draw(plot: Plot, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(8, 4.5), layout="constrained")
    try:
        if isinstance(plot, Bars):
            _bars(axes, plot)
        else:
            _cdf(axes, plot)
        axes.set_title(plot.title)
        figure.savefig(path, dpi=100)
    finally:
        pyplot.close(figure)


def _plain_log_ticks(axis: Axis) -> None:
    """Label a log axis 20, 50, 100 rather than 2x10^1 (minor ticks: only 2s and 5s)."""
    from matplotlib.ticker import FuncFormatter

    def minor(value: float, _: int) -> str:
        return f"{value:g}" if round(value / 10 ** math.floor(math.log10(value))) in (2, 5) else ""

    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(FuncFormatter(minor))


def _bars(axes: Axes, plot: Bars) -> None:
    width = 0.8 / len(plot.series)
    for i, (label, values) in enumerate(plot.series.items()):
        positions = [g + (i - (len(plot.series) - 1) / 2) * width for g in range(len(values))]
        bars = axes.bar(positions, values, width, label=label)
        axes.bar_label(bars, fmt=number, fontsize=7)
    axes.set_xticks(range(len(plot.groups)), plot.groups)
    axes.set_ylabel(plot.ylabel)
    if plot.log:
        axes.set_yscale("log")
        _plain_log_ticks(axes.yaxis)
    axes.margins(y=0.15)  # room for the legend and the labels
    if len(plot.series) > 1:
        axes.legend(fontsize="small")


def _cdf(axes: Axes, plot: Cdf) -> None:
    for label, samples in plot.series.items():
        ordered = sorted(samples)
        fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
        axes.step(ordered, fractions, where="post", label=label)
    axes.set_xscale("log")
    _plain_log_ticks(axes.xaxis)
    axes.set_xlabel(plot.xlabel)
    axes.set_ylabel("fraction of reads")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
