"""An annotator in a real browser: headless Chromium answers round 0 in the REAL Label Studio's label stream.

What an annotator does, nothing more: log in through Label Studio's login form, open the project's label stream
(``/projects/<id>/data?labeling=1``, what "Label All Tasks" opens), change the class of SOME pre-labelled query
points with the class hotkeys, leave the others as they came, and submit. The backend (``python -m ovaal_backend
serve``, connected like the end-to-end test) must then hold exactly those classes at exactly those pixels: read
from its SQLite store (``Clicks.labelled_points`` under MODEL_DIR), not from what Label Studio says it saved.

Two query tasks, two ways of working:
1. keyboard only: ``alt+.`` (Label Studio's "cycle through regions") selects the next point, a class hotkey sets
   its class, ``alt+.`` again passes over a point whose guess is right, ``ctrl+enter`` submits;
2. mouse: click a point on the image, press the hotkey, click the Submit button.
The page is read (``window.Htx``, the editor's store, and ``window.Konva``'s circles) only to know where points are
drawn, which point is selected and what colour a point is drawn in, as an annotator would see it on screen.

Chromium is driven over the DevTools protocol on a pipe (``benchmarks/screenshot_query_task.Chromium``: standard
library only). Needs Debian's ``/usr/bin/chromium`` and ``OVAAL_LS_BIN`` (skips without either). The fast tests at
the end pin benchmarks/point_contrast.py's colour model to the fills Label Studio drew in Chromium. Run with
``OVAAL_LS_BIN=$PWD/.venv-ls/bin/label-studio .venv/bin/python -m pytest tests/test_annotator_browser.py -s``.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ovaal_backend.backend.convert import ParsedLabelConfig, percent_to_pixel
from ovaal_backend.backend.store import ProjectStore
from tests.helpers.fake_label_studio import XML as SYNTHETIC_XML
from tests.helpers.ls_server import BackendError, BackendProcess, backend_env, loopback_session, wait_for
from tests.helpers.synthetic import make_dataset

from .test_dashboard_browser import chromium_binary

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from point_contrast import OPACITY, drawn_fill  # noqa: E402 - benchmarks/ is not a package
from screenshot_query_task import Chromium, login  # noqa: E402

CAMVID = ROOT.parent / "shared" / "data" / "camvid" / "train"
N_IMAGES = 3  # two query tasks are answered: the round stays open, so no training runs meanwhile
POINTS = 8
WINDOW = (1400, 900)
SETTINGS = {
    "IMAGE_HEIGHT": "64", "IMAGE_WIDTH": "96", "INIT_PIXELS": str(POINTS), "PIXELS_PER_ROUND": str(POINTS),
    "ROUNDS": "1", "FIRST_ROUND_EPOCHS": "1", "EPOCHS": "1", "SEMI": "false", "BATCH_SIZE": "4",
}

NO_CHROMIUM = "no chromium binary (Debian: apt-get install -y chromium; `make test` installs it; OVAAL_CHROMIUM)"

EDITOR_JS = """(() => {
  const h = window.Htx, a = h && h.annotationStore && h.annotationStore.selected;
  const img = [...document.images].find(i => i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width > 100);
  if (!a || !a.regions.length || !img || !window.Konva) return null;
  const r = img.getBoundingClientRect();
  const labels = h.annotationStore.names.get('query').children.map(l => [l.value, l.hotkey, l.background]);
  const circles = {};
  window.Konva.stages.forEach(s => s.find('Circle').forEach(c => {
    circles[c.name().split(' ')[0]] = [c.fill(), c.stroke()];
  }));
  return JSON.stringify({
    task: h.task && h.task.id, image: [r.left, r.top, r.width, r.height], labels,
    selected: a.highlightedNode ? a.highlightedNode.id.split('#')[0] : null,
    active: a.names.get('query').selectedLabels.map(l => l.value).join('|'),
    regions: a.regions.map(g => ({id: g.id.split('#')[0], x: g.x, y: g.y, width: g.width,
                                  label: ((g.labeling && g.labeling.mainValue) || []).join('|'),
                                  circle: circles[g.id] || null})),
  });
})()"""
"""The open task as the editor shows it: its id, the image's place on screen, the hotkey shown beside each query
label, the selected point, the query label(s) the control shows as active, and each point (percent coordinates,
class, drawn fill and stroke); null until drawn."""


class Tab:
    """One logged-in Chromium tab on Label Studio: navigate, read the page, press keys, click."""

    def __init__(self, ls, binary: str) -> None:
        self.chrome = Chromium(binary, "127.0.0.1")
        target = self.chrome.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.chrome.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for method in ("Page.enable", "Network.enable", "Runtime.enable"):
            self.send(method)
        for cookie in login(ls.url, ls.email, ls.password):  # Label Studio's own login form
            self.send("Network.setCookie", {**cookie, "url": ls.url})
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False})
        self.keys = 0  # key presses and clicks the annotator made

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.chrome.send(method, params, session=self.session)

    def evaluate(self, expression: str) -> Any:
        reply = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in reply:
            raise RuntimeError(f"page script failed: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def editor(self) -> dict[str, Any] | None:
        value = self.evaluate(EDITOR_JS)
        return json.loads(value) if value else None

    def wait_editor(self, what: str, condition=lambda state: True, timeout: float = 60) -> dict[str, Any]:
        try:
            return wait_for(what, lambda: (s := self.editor()) and condition(s) and s, timeout, interval=0.25)
        except TimeoutError as e:
            page = self.evaluate("location.href + '\\n' + document.body.innerText.slice(0, 600)")
            raise TimeoutError(f"{e}\n--- the page ---\n{page}\n--- the editor ---\n{self.editor()}") from None

    def press(self, key: str, alt: bool = False, ctrl: bool = False) -> None:
        """One key press (keyDown with its text, keyUp), as a keyboard sends it."""
        char = key if len(key) == 1 else ""
        code = {"Enter": ("Enter", 13), ".": ("Period", 190)}.get(key) or (
            (f"Digit{key}", ord(key)) if key.isdigit() else (f"Key{key.upper()}", ord(key.upper())))
        event = {"key": key, "code": code[0], "windowsVirtualKeyCode": code[1], "modifiers": alt * 1 + ctrl * 2}
        self.send("Input.dispatchKeyEvent", dict(event, type="keyDown",
                                                 **({"text": char} if char and not (alt or ctrl) else {})))
        self.send("Input.dispatchKeyEvent", dict(event, type="keyUp"))
        self.keys += 1

    def click(self, x: float, y: float) -> None:
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})
        self.keys += 1

    def click_button(self, text: str) -> None:
        """Click the visible button whose text is ``text`` (where it is on screen, like a person)."""
        box = self.evaluate(f"""(() => {{ const b = [...document.querySelectorAll('button')].find(
            e => e.innerText.trim() === {json.dumps(text)} && e.offsetParent !== null);
            if (!b) return null;
            const r = b.getBoundingClientRect();
            return [r.left + r.width / 2, r.top + r.height / 2];
        }})()""")
        assert box, f"no visible {text!r} button"
        self.click(*box)

    def close(self) -> None:
        self.chrome.close()


def on_screen(state: dict[str, Any], region: dict[str, Any]) -> tuple[float, float]:
    """Where a point is drawn in the window (its percent coordinates on the displayed image)."""
    left, top, width, height = state["image"]
    return left + region["x"] / 100 * width, top + region["y"] / 100 * height


def rgb(hex_colour: str) -> str:
    """A label colour as Konva's stroke reads."""
    return "rgb({},{},{})".format(*(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)))


def drawn(hex_colour: str) -> str:
    """A label colour's keypoint fill as Konva's fill reads (the model of benchmarks/point_contrast.py)."""
    return "rgba({},{},{},{})".format(*drawn_fill(hex_colour).astype(int), OPACITY)


def ready(state: dict[str, Any]) -> bool:
    """A point is selected and the label control shows its class as active.

    Label Studio updates the control a moment after the selection (a debounced timer); a class hotkey pressed
    before that, when it names the class the previously selected point had, reads as "unselect the active label"
    and is refused, so the point keeps its old class. Measured: alt+. then the same hotkey sent with no pause lost 2 of
    25 changes in 5 runs; with 0.1 s or 0.25 s between keys (a fast typist) none in 10 runs.
    """
    labels = {r["id"]: r["label"] for r in state["regions"]}
    return bool(state["selected"]) and state["active"] == labels.get(state["selected"])


def crowded(state: dict[str, Any]) -> set[str]:
    """Points with another point within two diameters on screen: a click there may hit the neighbour."""
    width = state["image"][2]
    spots = {r["id"]: np.array(on_screen(state, r)) for r in state["regions"]}
    return {a for a in spots for b in spots if a != b and np.linalg.norm(spots[a] - spots[b]) <
            4 * max(2.0, state["regions"][0]["width"] / 100 * width)}


@pytest.fixture(scope="module")
def dataset(label_studio) -> dict[str, Any]:
    folder = label_studio.document_root / "ovaal-browser"
    folder.mkdir()
    if CAMVID.is_dir():
        for path in sorted((CAMVID / "images").glob("*.jpg"))[:N_IMAGES]:
            shutil.copy(path, folder / path.name)
        config = (ROOT / "label_config" / "camvid.xml").read_text()
    else:
        make_dataset(folder / "synthetic", N_IMAGES, height=60, width=80)
        for path in sorted((folder / "synthetic" / "images").glob("*.png")):
            shutil.move(path, folder / path.name)
        shutil.rmtree(folder / "synthetic")
        root = ET.fromstring(SYNTHETIC_XML)  # the fake's 3-class config, with hotkeys like the shipped configs
        for label, key in zip(root.find("./KeyPointLabels"), "123i", strict=True):
            label.set("hotkey", key)
        config = ET.tostring(root, encoding="unicode")
    return {"folder": folder, "names": sorted(p.name for p in folder.iterdir()), "config": config,
            "parsed_config": ParsedLabelConfig.parse(config)}


@pytest.fixture(scope="module")
def backend(label_studio, tmp_path_factory):
    env = backend_env(label_studio, tmp_path_factory.mktemp("ovaal-browser-models"), SETTINGS)
    process = BackendProcess(env, tmp_path_factory.mktemp("ovaal-browser-log") / "backend.log", startup_timeout=90)
    try:
        process.start()
    except BackendError as e:
        pytest.fail(str(e))
    yield process
    process.stop()


@pytest.fixture
def tab(label_studio):
    opened = Tab(label_studio, chromium_binary())
    yield opened
    opened.close()


def stored_answers(backend: BackendProcess, project_id: int) -> dict[int, set[tuple[int, int, str]]]:
    """What the backend's SQLite store holds: source task -> {(row, col, label name)} ("ignore" for can't tell)."""
    path = Path(backend.env["MODEL_DIR"]) / str(project_id) / "labels.sqlite3"
    if not path.is_file():
        return {}
    store = ProjectStore(path, str(project_id))
    names = store.state.load().get("label_names", [])
    return {source: {(int(r), int(c), names[int(k)] if k >= 0 else "ignore") for r, c, k in points}
            for source, points in store.clicks.labelled_points().items()}


@pytest.mark.e2e
@pytest.mark.skipif(chromium_binary() is None, reason=NO_CHROMIUM)
def test_annotator_relabels_points_with_hotkeys_in_label_studio(label_studio, dataset, backend, tab):
    t_start = time.monotonic()
    client, parsed_config = label_studio.client(), dataset["parsed_config"]
    project = client.projects.create(title="OVAAL annotator in a browser", label_config=dataset["config"])
    pid = project.id
    client.import_storage.local.create(project=pid, path=str(dataset["folder"]), title="images", use_blob_urls=True)
    client.projects.import_tasks(id=pid, request=[
        {"data": {"image": label_studio.local_files_url(dataset["folder"] / n)}} for n in dataset["names"]])
    client.ml.create(project=pid, url=backend.url, title="OVAAL")
    queries = wait_for("round-0 query tasks", lambda: (q := {
        t.id: t for t in client.tasks.list(project=pid, fields="all") if t.data.get("ovaal_query")}) and
        len(q) == N_IMAGES and all(t.predictions for t in q.values()) and q, 60, backend)
    wait_for("uncertainty sampling on ovaal-0", lambda: (p := client.projects.get(id=pid)).model_version == "ovaal-0"
             and p.sampling == "Uncertainty sampling", 30, backend)

    # The annotator opens the backend's "OVAAL queries" tab and presses "Label All Tasks". From the Data Manager,
    # Label Studio 1.23.2 sends the tab's filters with the request for the next task, which makes it serve the tab's
    # first unanswered task ("Data manager queue") instead of sampling: in a tab without the query filter that is a
    # source task, so the tab is what puts the query tasks in the stream.
    session = loopback_session()
    session.headers.update(label_studio.headers())
    view = wait_for('the "OVAAL queries" tab', lambda: [
        v["id"] for v in session.get(f"{label_studio.url}/api/dm/views/", params={"project": pid}, timeout=30).json()
        if v["data"].get("title") == "OVAAL queries"], 30, backend)[0]
    tab.send("Page.navigate", {"url": f"{label_studio.url}/projects/{pid}/data?tab={view}&labeling=1"})
    expected: dict[int, set[tuple[int, int, str]]] = {}
    done: set[int] = set()
    timings = []
    for way in ("keyboard", "mouse"):
        state = tab.wait_editor("the next task in the label stream", lambda s, done=frozenset(done): s["task"] not in
                                done and all(r["circle"] for r in s["regions"]))
        task = queries.get(state["task"])
        assert task is not None, f"the label stream served task {state['task']}, not a query task"
        hotkeys = {value: key for value, key, _ in state["labels"]}
        colours = {value: background for value, _, background in state["labels"]}
        assert hotkeys == {label.get("value"): label.get("hotkey")  # the hotkeys shown are the config's
                           for label in ET.fromstring(dataset["config"]).find("./KeyPointLabels")}
        regions = state["regions"]
        # round 0: "ignore"
        assert len(regions) == POINTS and {r["label"] for r in regions} == {parsed_config.ignore_label}
        prediction = [p for p in task.predictions if p.model_version == "ovaal-0"][0].result
        assert [r["id"] for r in regions] == [r["id"] for r in prediction]
        # Every point is drawn as benchmarks/point_contrast.py models it: filled with its label colour darkened,
        # at opacity 0.9, and outlined in the label colour itself (the editor has no other outline).
        for region in regions:
            assert region["circle"] == [drawn(colours[region["label"]]), rgb(colours[region["label"]])], region

        # Two points in a row get the same class, every third point stays "ignore".
        plan = {r["id"]: parsed_config.classes[(4 * (i // 3) + 1 + (way == "mouse")) % len(parsed_config.classes)]
                for i, r in enumerate(regions) if i % 3 != 2}
        if way == "mouse":  # a person would zoom in to tell touching points apart; this one leaves them alone
            plan = {rid: name for rid, name in plan.items() if rid not in crowded(state)}
        keys_before, t0 = tab.keys, time.monotonic()
        if way == "keyboard":
            visited = []
            for _ in regions:
                tab.press(".", alt=True)  # next point
                selected = tab.wait_editor("the next point selected", lambda s, seen=tuple(visited): ready(s) and
                                           s["selected"] not in seen, 10)["selected"]
                visited.append(selected)
                if selected in plan:
                    tab.press(hotkeys[plan[selected]])
            assert visited == [r["id"] for r in regions]  # alt+. walks the points in the Regions list's order
        else:
            for region in regions:
                if region["id"] not in plan:
                    continue
                tab.click(*on_screen(state, region))
                tab.wait_editor("the clicked point selected", lambda s, rid=region["id"]: ready(s) and
                                s["selected"] == rid, 10)
                tab.press(hotkeys[plan[region["id"]]])
        want = {r["id"]: plan.get(r["id"], parsed_config.ignore_label) for r in regions}
        shown = tab.wait_editor("the new classes on the points", lambda s, want=want: {
            r["id"]: r["label"] for r in s["regions"]} == want, 10)
        assert len(shown["regions"]) == POINTS  # no point added, moved or lost
        for region in shown["regions"]:  # drawn in its new colour; the selected point is outlined in red
            outline = "red" if region["id"] == shown["selected"] else rgb(colours[region["label"]])
            assert region["circle"][1] == outline, region
        seconds = time.monotonic() - t0
        if way == "keyboard":
            tab.press("Enter", ctrl=True)  # submit
        else:
            tab.click_button("Submit")
        timings.append((way, tab.keys - keys_before, len(plan), seconds))

        source = task.data["ovaal_source_task"]
        width, height = prediction[0]["original_width"], prediction[0]["original_height"]
        expected[source] = set()
        for region in prediction:
            col, row = percent_to_pixel(region["value"]["x"], region["value"]["y"], width, height)
            expected[source].add((row, col, want[region["id"]]))
        done.add(task.id)

    # The backend's store holds exactly those classes at exactly those pixels (its webhook stored the submits).
    stored = wait_for("both answers in the backend's store", lambda: (s := stored_answers(backend, pid)) and
                      len(s) == 2 and s, 60, backend)
    assert stored == expected
    for way, keys, changed, seconds in timings:
        print(f"\n{way}: {keys} key presses/clicks for {POINTS} points ({changed} changed) and the submit, "
              f"{seconds:.1f} s in the browser")
    print(f"annotator test: {time.monotonic() - t_start:.0f} s after Label Studio was up")


@pytest.mark.parametrize(("label", "konva_fill"), [  # read from Konva's circles in Chromium (Label Studio 1.23.2)
    ("#00FFFF", (0, 239, 239)), ("#808000", (113, 114, 0)), ("#808080", (114, 114, 114)), ("#800000", (112, 0, 0)),
    ("#400080", (48, 0, 114)), ("#804080", (114, 51, 114))])
def test_contrast_benchmark_draws_points_as_label_studio(label, konva_fill):
    assert tuple(drawn_fill(label).astype(int)) == konva_fill


def test_contrast_benchmark_colour_formulas():
    from point_contrast import ciede2000, contrast_ratio, lab

    # Sharma, Wu and Dalal (2005), the CIEDE2000 test data: pairs 1 and 17.
    assert ciede2000(np.array([50, 2.6772, -79.7751]), np.array([50, 0, -82.7485])) == pytest.approx(2.0425, abs=1e-4)
    assert ciede2000(np.array([50, 2.5, 0]), np.array([73, 25, -18])) == pytest.approx(27.1492, abs=1e-4)
    assert contrast_ratio(np.array([255, 255, 255]), np.array([0, 0, 0])) == pytest.approx(21)
    assert lab(np.array([255, 255, 255])) == pytest.approx([100, 0, 0], abs=1e-3)
