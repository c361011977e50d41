"""``runner dashboard`` in a real headless browser (Chromium and chromedriver from the
system's packages; ``.ci/run`` installs them): a person watches the babysit example train
and steers it from the page.

Set ``RUNNER_DASHBOARD_SCREENSHOT=FILE.png`` to keep a screenshot of the page mid-run (the
one in docs/ was made so).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import orjson
import pytest

from runner.records.events import read_events
from tests.conftest import ROOT, deep_update
from tests.dashboard_helpers import Dashboard, wait_for

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
webdriver = pytest.importorskip("selenium.webdriver")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    if os.environ.get("CI"):
        pytest.fail("CI must run the browser test: apt-get install chromium chromium-driver", pytrace=False)
    pytest.skip("needs Chromium and chromedriver: apt-get install chromium chromium-driver", allow_module_level=True)

TRIAL_COLOR = (0x1F, 0x77, 0xB4)  # trial 0's curve (COLORS[0] in dashboard.js)
PIXELS_OF = """
const [curve, rgb] = arguments;
const canvas = document.querySelector(`.chart[data-curve="${curve}"] canvas`);
if (!canvas) return 0;
const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
let n = 0;
for (let i = 0; i < data.length; i += 4)
  if (Math.abs(data[i] - rgb[0]) + Math.abs(data[i + 1] - rgb[1]) + Math.abs(data[i + 2] - rgb[2]) < 60) n++;
return n;
"""
FETCH = """
const [path, headers, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
fetch(path, {method: "POST", headers, body: JSON.stringify({settings: {lr: 0.5}})}).then((r) => done(r.status));
"""


@pytest.fixture
def babysit(tmp_path):
    """The babysit example, training until it is stopped."""
    spec = deep_update(json.loads((ROOT / "experiments" / "digits_babysit.json").read_text()), {"$schema": None})
    exp = tmp_path / "babysit.json"
    exp.write_bytes(orjson.dumps(deep_update(spec, {"train": {"epochs": 100_000}})))
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", "start", exp, "--out", tmp_path / "runs", "--plain"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_dir = wait_for(lambda: next((tmp_path / "runs").glob("*/status.json"), None), what="the run").parent
    yield process, run_dir
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def events(run_dir, kind: str, **fields) -> list[dict]:
    return [
        e
        for e in read_events(run_dir / "events.jsonl")
        if e["event"] == kind and all(e.get(k) == v for k, v in fields.items())
    ]


def test_a_person_watches_and_steers_the_babysit_example_from_the_page(babysit, browser, tmp_path):
    from selenium.webdriver.common.by import By

    process, run_dir = babysit
    board = Dashboard("--out", run_dir.parent)
    try:
        find = browser.find_element
        browser.get(board.url)
        link = wait_for(lambda: browser.find_elements(By.LINK_TEXT, run_dir.name), what="the run listed")[0]
        assert board.token not in browser.current_url  # it left the address bar
        link.click()

        # The curves are drawn, and a new epoch appears.
        chart = wait_for(
            lambda: browser.find_elements(By.CSS_SELECTOR, '.chart[data-curve="val_acc"][data-epochs]'),
            what="the val_acc chart",
        )[0]
        wait_for(lambda: browser.execute_script(PIXELS_OF, "val_acc", TRIAL_COLOR) > 30, what="a curve drawn")
        drawn = int(chart.get_attribute("data-epochs"))
        wait_for(lambda: int(chart.get_attribute("data-epochs")) > drawn, what="a new epoch on the chart")
        assert {c.get_attribute("data-curve") for c in browser.find_elements(By.CSS_SELECTOR, ".chart")} >= {
            "val_acc", "val_loss", "train_loss", "lr", "momentum",
        }  # fmt: skip

        # Set lr from the page: a nudge in the log, acknowledged on the page.
        wait_for(lambda: find(By.ID, "set-lr").is_displayed(), what="the steering panel")
        find(By.ID, "setting-lr").send_keys("0.005")
        find(By.ID, "set-lr").click()
        applied = wait_for(
            lambda: browser.find_elements(By.CSS_SELECTOR, '#orders .order[data-state="applied"]'), what="applied"
        )[0]
        [nudge] = events(run_dir, "nudge", source="control")
        assert nudge["changes"]["lr"]["new"] == 0.005
        assert f"at step {nudge['step']}" in applied.text and "lr=0.005" in applied.text

        # A value the run's schema refuses is shown refused, with the reason, and nothing is written.
        before = (run_dir / "control.json").read_bytes()
        find(By.ID, "setting-momentum").send_keys("1.5")
        find(By.ID, "set-momentum").click()
        refused = wait_for(
            lambda: browser.find_elements(By.CSS_SELECTOR, '#orders .order[data-state="refused"]'), what="refused"
        )[0]
        assert "momentum" in refused.text and "< 1" in refused.text
        assert (run_dir / "control.json").read_bytes() == before

        # A person editing the control file by hand: the page sees it.
        document = json.loads(before)
        document["momentum"] = 0.8
        (run_dir / ".control.json.tmp").write_text(json.dumps(document, indent=2))
        os.replace(run_dir / ".control.json.tmp", run_dir / "control.json")
        wait_for(lambda: '"momentum": 0.8' in find(By.ID, "control-file").text, what="the hand edit shown")
        wait_for(lambda: "momentum=0.8 (applied)" in find(By.ID, "reads").text, what="the hand edit's verdict")

        # Pause and go on, from the page.
        find(By.ID, "pause").click()
        wait_for(lambda: events(run_dir, "pause", source="control"), what="a pause")
        find(By.ID, "resume").click()
        wait_for(lambda: events(run_dir, "unpause", source="control"), what="an unpause")
        wait_for(lambda: "paused" in find(By.ID, "marks").text, what="the pause marked")

        # A request without the token, even from the page itself, changes nothing.
        status = browser.execute_async_script(
            FETCH, f"/api/runs/{run_dir.name}/orders", {"Content-Type": "application/json"}
        )
        assert status == 403
        asked = [{k: c["new"] for k, c in e["changes"].items()} for e in events(run_dir, "nudge", source="control")]
        assert asked == [{"lr": 0.005}, {"momentum": 0.8}]  # the page's and the hand edit's; not lr 0.5

        if os.environ.get("RUNNER_DASHBOARD_SCREENSHOT"):
            browser.save_screenshot(os.environ["RUNNER_DASHBOARD_SCREENSHOT"])

        # Stop the run from the page: it ends, and the page turns read-only.
        find(By.ID, "stop-run").click()
        browser.switch_to.alert.accept()
        assert process.wait(timeout=60) == 0
        wait_for(lambda: find(By.ID, "run-state").text == "finished", what="the run shown finished")
        assert not find(By.ID, "steer").is_displayed()
        assert events(run_dir, "experiment_complete")
    finally:
        board.close()
