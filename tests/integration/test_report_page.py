"""The interactive report page in a real headless Chromium: built from the committed default run's data, opened
from a file with every request sent to a dead proxy (offline), every chart drawn with every element of its
data; a mode hidden from the start (`#hide=...`, the same path as unticking its checkbox) leaves every chart."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from benchmark import report

CHROMIUM = shutil.which("chromium")
RUN = Path(__file__).parents[2] / "reports" / "default"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/bootstrap.sh)")


class Drawn(HTMLParser):
    """What Chromium's DOM holds after the scripts ran: each figure's data-drawn, and the drawn SVG elements
    (with their mode) per figure."""

    def __init__(self) -> None:
        super().__init__()
        self.rendered: str | None = None
        self.figures: dict[str, dict[str, Any]] = {}
        self.current: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "body":
            self.rendered = attributes.get("data-rendered")
        elif tag == "figure" and attributes.get("id"):
            self.current = str(attributes["id"])
            self.figures[self.current] = {"drawn": attributes.get("data-drawn"), "modes": [], "tags": []}
        elif self.current and "data-mode" in attributes:
            self.figures[self.current]["modes"].append(attributes["data-mode"])
            self.figures[self.current]["tags"].append(tag)


def _open(page: Path, fragment: str = "") -> Drawn:
    argv = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    argv += ["--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]  # offline: no request can leave
    result = subprocess.run(
        [*argv, "--dump-dom", page.as_uri() + fragment], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    drawn = Drawn()
    drawn.feed(result.stdout)
    return drawn


def _data(page: Path) -> dict[str, Any]:
    found = re.search(r'<script id="report-data" type="application/json">(.*?)</script>', page.read_text(), re.S)
    assert found is not None
    return json.loads(found.group(1).replace("<\\/", "</"))


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    shutil.copytree(RUN / "data", run / "data")
    shutil.copy(RUN / "meta.json", run / "meta.json")
    readme = report.build(run)
    assert "[report.html](report.html)" in readme.read_text()  # the Markdown report links the page
    return run / "report.html"


@pytest.mark.slow
def test_every_chart_is_drawn_with_all_its_data_offline(page: Path) -> None:
    assert not re.search(r"""(src|href)=["']?https?:|<link|import\(""", page.read_text())  # nothing to fetch
    data = _data(page)
    charts = {chart["id"]: chart for chart in data["charts"]}
    kinds = {key.split("-")[1] for key in charts}
    assert kinds >= {"pulls", "cdf", "timeline", "advertisement", "upstream", "mirror"}
    drawn = _open(page)
    assert drawn.rendered == str(len(charts))
    assert set(drawn.figures) == set(charts)
    for key, chart in charts.items():
        shown = next(iter(chart["variants"].values()))
        figure = drawn.figures[key]
        assert figure["drawn"] == str(len(shown)) and len(figure["tags"]) == len(shown), key
        assert sorted(figure["modes"]) == sorted(e["mode"] for e in shown), key
    points = [t for f in drawn.figures.values() for t in f["tags"] if t == "circle"]
    assert len(points) == sum(
        1 for c in charts.values() for e in next(iter(c["variants"].values())) if e["type"] == "point"
    )
    timelines = [c for c in charts.values() if c["id"].startswith("chart-timeline")]
    assert all(next(iter(c["variants"])).endswith("(slowest)") for c in timelines)
    assert all(any(line["label"] == "lower bound" for line in c["lines"]) for c in timelines)


@pytest.mark.slow
def test_a_hidden_mode_leaves_every_chart(page: Path) -> None:
    data = _data(page)
    drawn = _open(page, "#hide=upstream,proxy")
    modes = {mode for figure in drawn.figures.values() for mode in figure["modes"]}
    assert modes and not modes & {"upstream", "proxy"}
    everything = {e["mode"] for c in data["charts"] for v in c["variants"].values() for e in v}
    assert {"upstream", "proxy"} <= everything  # they were there to hide
