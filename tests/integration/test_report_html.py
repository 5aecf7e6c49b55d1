"""summary.html: one self-contained page, opened in a real headless browser (Chromium), which renders its
tables and figures; skipped with the reason where no Chromium is installed (.ci/run installs Debian's)."""
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from segbench.report import build_report
from segbench.runs import RunDir
from segbench.train import run
from tests.conftest import TINY, compose_cfg

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    for model, loss in (("unet", "bce"), ("segnet", "dice")):  # two sizes of network: params differ
        run(compose_cfg([*TINY, f"model={model}", f"loss={loss}", f"output_dir={out / loss}"]))
    build_report([RunDir(out / "bce"), RunDir(out / "dice")], out)
    return out


def test_the_page_is_self_contained_with_every_figure_and_table(report):
    page = (report / "summary.html").read_text()
    pngs = sorted(p.name for p in report.glob("*.png"))
    assert len(pngs) >= 8 and page.count('src="data:image/png;base64,') == len(pngs)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page) and "<link" not in page  # fetches nothing
    tables = sum(line.startswith("|---") for line in (report / "summary.md").read_text().splitlines())
    assert page.count("<table>") == tables >= 3
    assert '<a href="#fig-reliability.png"><code>reliability.png</code></a>' in page


def _browser(*args, timeout=120):
    return subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--virtual-time-budget=10000", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(BROWSER is None, reason="no Chromium installed (apt-get install chromium); .ci/run installs it")
def test_chromium_renders_the_tables_and_the_figures(report, tmp_path):
    url = (report / "summary.html").resolve().as_uri()
    dom = _browser("--dump-dom", url).stdout
    pngs = len(list(report.glob("*.png")))
    assert f'data-figures-shown="{pngs}"' in dom  # every embedded figure decoded
    assert dom.count('<table class="sortable">') >= 3 and 'title="sort by this column"' in dom  # the script ran
    shot = tmp_path / "shot.png"
    result = _browser(f"--screenshot={shot}", "--window-size=1300,9000", url)
    assert shot.is_file(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    header = np.all(np.abs(pixels.astype(int) - [0xDD, 0xE4, 0xEE]) <= 2, axis=1).sum()
    assert header > 1000  # the tables' header rows are drawn
    plotted = np.all(np.abs(pixels.astype(int) - [0x1F, 0x77, 0xB4]) <= 12, axis=1).sum()
    assert plotted > 200  # matplotlib's first line colour: the embedded figures are drawn


@pytest.mark.skipif(BROWSER is None, reason="no Chromium installed (apt-get install chromium); .ci/run installs it")
def test_a_click_on_a_header_sorts_the_table(report, tmp_path):
    """The page's own script, clicked by a copy of the page (as a reader would click): the ranking table by
    parameter count (numbers with thousands separators) and by loss (text), both ways."""
    clicks = """<script>
    const table = document.querySelector("table");
    function sorted(name) {
      const header = Array.from(table.tHead.rows[0].cells).find(th => th.textContent.trim() === name);
      const column = Array.from(header.parentNode.cells).indexOf(header);
      const order = () => Array.from(table.tBodies[0].rows).map(r => r.cells[column].textContent.trim()).join(";");
      header.click(); const up = order(); header.click(); return [up, order()];
    }
    [document.body.dataset.up, document.body.dataset.down] = sorted("params");
    [document.body.dataset.textUp, document.body.dataset.textDown] = sorted("loss");
    </script></body>"""
    page = tmp_path / "clicked.html"
    page.write_text((report / "summary.html").read_text().replace("</body>", clicks))
    dom = _browser("--dump-dom", page.as_uri()).stdout
    up = re.search(r'data-up="([^"]*)"', dom).group(1).split(";")
    down = re.search(r'data-down="([^"]*)"', dom).group(1).split(";")
    values = [int(v.replace(",", "")) for v in up]
    assert len(values) == 2 and values[0] < values[1] and down == up[::-1]
    assert 'data-text-up="BCELoss;DiceLoss"' in dom and 'data-text-down="DiceLoss;BCELoss"' in dom
