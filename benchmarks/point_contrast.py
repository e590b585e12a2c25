"""How visible is each keypoint colour of a label config on CamVid images? Colour contrast around query points.

Label Studio 1.23.2 draws a labelled keypoint (``KeyPointRegion``) as a disc of radius ``width`` percent of the shown
image width (the backend's POINT_SIZE, 0.6), filled with the label's ``background`` darkened by 0.3 (chroma.js
``darken``: CIELAB L - 5.4) at the control's ``opacity`` (0.9) over the image, and outlined (1 screen pixel) in the
same ``background``; a selected point is outlined in red. ``strokeColor``/``fillColor`` of the control only apply to
points without a label, so a config has no way to give labelled points an outline of another colour.
tests/test_annotator_browser.py checks this model against the circles Label Studio draws in Chromium.

For every colour this measures, at query-like points of CamVid images, the contrast between the drawn disc (the
darkened colour at 0.9 over the pixel under it) and the image around it (mean colour of the ring from 1 to 2 point
radii outside the disc): the WCAG 2 contrast ratio (luminance only; WCAG 2.1 asks >= 3 for graphics) and the
CIEDE2000 colour difference (hue too). A point counts as *hard to see* where both are low (DE00 < 10 and ratio < 1.5:
no clear hue or lightness step). Points: round-0-like (uniform random) and border-like (a different class within
3 pixels, where entropy queries of later rounds gather); a class colour is measured on every point and on the points
of its own class (where a right guess puts it).

Usage: .venv/bin/python benchmarks/point_contrast.py [--config label_config/camvid.xml] [--points 60] [--no-docs]
Needs ../shared/data/camvid (exits 0 with a note when absent); prints Markdown and writes it to docs/benchmarks.md
(section POINT-CONTRAST).
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from doc_section import write_section  # noqa: E402

from ovaal_backend.config import Config  # noqa: E402

CAMVID = ROOT.parent / "shared" / "data" / "camvid"
DARKEN = 0.3
"""chroma.js ``darken`` amount Label Studio applies to a keypoint's fill (hooks/useRegionColor.ts)."""
OPACITY = 0.9
"""KeyPointLabels' default ``opacity``: the fill's alpha."""
HARD_DE, HARD_RATIO = 10.0, 1.5
"""A point is hard to see where DE00 < HARD_DE and the WCAG ratio < HARD_RATIO."""
BORDER_RADIUS = 3
D65 = np.array([0.95047, 1.0, 1.08883])
RGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                       [0.0193339, 0.1191920, 0.9503041]])
XYZ_TO_RGB = np.array([[3.2404542, -1.5371385, -0.4985314], [-0.9692660, 1.8760108, 0.0415560],
                       [0.0556434, -0.2040259, 1.0572252]])


# --- colour science (the formulas of chroma.js, which Label Studio uses, and of WCAG 2 / CIEDE2000) ---------------

def to_linear(srgb: np.ndarray) -> np.ndarray:
    """sRGB 0..255 -> linear 0..1."""
    c = np.asarray(srgb, dtype=np.float64) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def to_srgb(linear: np.ndarray) -> np.ndarray:
    """linear -> sRGB 0..255 (unclipped, unrounded)."""
    c = np.asarray(linear, dtype=np.float64)
    return 255.0 * np.where(c <= 0.0031308, 12.92 * c, 1.055 * np.abs(c) ** (1 / 2.4) * np.sign(c) - 0.055)


def lab(srgb: np.ndarray) -> np.ndarray:
    """sRGB 0..255 (..., 3) -> CIELAB (D65), as chroma.js computes it."""
    xyz = to_linear(srgb) @ RGB_TO_XYZ.T / D65
    f = np.where(xyz > 0.008856452, np.cbrt(xyz), xyz / 0.12841855 + 0.137931034)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def lab_to_srgb(values: np.ndarray) -> np.ndarray:
    """CIELAB -> sRGB 0..255, clipped and rounded (chroma.js ``.css()``)."""
    y = (values[..., 0] + 16) / 116
    f = np.stack([y + values[..., 1] / 500, y, y - values[..., 2] / 200], axis=-1)
    xyz = np.where(f > 0.206896552, f ** 3, 0.12841855 * (f - 0.137931034)) * D65
    return np.clip(np.round(to_srgb(xyz @ XYZ_TO_RGB.T)), 0, 255)


def hex_rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.float64)


def drawn_fill(colour: str) -> np.ndarray:
    """The fill Label Studio gives a keypoint of this label colour: ``chroma(colour).darken(0.3)`` (alpha aside)."""
    darker = lab(hex_rgb(colour))
    darker[0] -= 18 * DARKEN
    return lab_to_srgb(darker)


def luminance(srgb: np.ndarray) -> np.ndarray:
    """WCAG 2 relative luminance."""
    return to_linear(srgb) @ np.array([0.2126, 0.7152, 0.0722])


def contrast_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    la, lb = luminance(a), luminance(b)
    return (np.maximum(la, lb) + 0.05) / (np.minimum(la, lb) + 0.05)


def ciede2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference (kL = kC = kH = 1)."""
    l1, a1, b1 = np.moveaxis(lab1, -1, 0)
    l2, a2, b2 = np.moveaxis(lab2, -1, 0)
    c_mean = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(c_mean ** 7 / (c_mean ** 7 + 25.0 ** 7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p, h2p = np.degrees(np.arctan2(b1, a1p)) % 360, np.degrees(np.arctan2(b2, a2p)) % 360
    dlp, dcp = l2 - l1, c2p - c1p
    dh = h2p - h1p
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh))
    dh = np.where(c1p * c2p == 0, 0, dh)
    dhp = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh) / 2)
    lpm, cpm = (l1 + l2) / 2, (c1p + c2p) / 2
    hsum = h1p + h2p
    hpm = np.where(np.abs(h1p - h2p) > 180, np.where(hsum < 360, hsum + 360, hsum - 360), hsum) / 2
    hpm = np.where(c1p * c2p == 0, hsum, hpm)
    t = (1 - 0.17 * np.cos(np.radians(hpm - 30)) + 0.24 * np.cos(np.radians(2 * hpm))
         + 0.32 * np.cos(np.radians(3 * hpm + 6)) - 0.20 * np.cos(np.radians(4 * hpm - 63)))
    sl = 1 + 0.015 * (lpm - 50) ** 2 / np.sqrt(20 + (lpm - 50) ** 2)
    sc, sh = 1 + 0.045 * cpm, 1 + 0.015 * cpm * t
    rt = (-2 * np.sqrt(cpm ** 7 / (cpm ** 7 + 25.0 ** 7))
          * np.sin(np.radians(60 * np.exp(-(((hpm - 275) / 25) ** 2)))))
    return np.sqrt((dlp / sl) ** 2 + (dcp / sc) ** 2 + (dhp / sh) ** 2 + rt * (dcp / sc) * (dhp / sh))


# --- the measurement -----------------------------------------------------------------------------------------------

def query_colours(config_xml: str) -> dict[str, str]:
    """label value -> background of the KeyPointLabels control (the classes, then the ignore label)."""
    control = ET.fromstring(config_xml).find(".//KeyPointLabels")
    return {label.get("value"): label.get("background") for label in control}


def ring_offsets(radius: float) -> np.ndarray:
    """(dy, dx) of the pixels from 1 to 2 radii outside a disc of ``radius`` pixels (at least one pixel wide)."""
    outer = int(np.ceil(2 * radius + 2))
    dy, dx = np.mgrid[-outer:outer + 1, -outer:outer + 1]
    distance = np.hypot(dy, dx)
    keep = (distance > radius + 1) & (distance <= 2 * radius + 2)
    return np.stack([dy[keep], dx[keep]], axis=1)


def border_mask(label: np.ndarray, radius: int, n_classes: int) -> np.ndarray:
    """Pixels of a class with another class within ``radius`` (Chebyshev) pixels."""
    valid = label < n_classes
    padded = np.pad(label, radius, mode="edge")
    height, width = label.shape
    other = np.zeros_like(valid)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            near = padded[dy:dy + height, dx:dx + width]
            other |= (near != label) & (near < n_classes)
    return valid & other


def sample_points(rng: np.random.Generator, mask: np.ndarray, count: int, margin: int) -> np.ndarray:
    rows, cols = np.nonzero(mask[margin:-margin, margin:-margin])
    if len(rows) == 0:
        return np.zeros((0, 2), dtype=int)
    pick = rng.choice(len(rows), size=min(count, len(rows)), replace=False)
    return np.stack([rows[pick], cols[pick]], axis=1) + margin


def measure(args: argparse.Namespace) -> dict:
    colours = query_colours(Path(args.config).read_text())
    for entry in args.try_colours:  # "label=#RRGGBB": that label drawn in another colour
        name, colour = entry.split("=", 1)
        colours[f"{name} as {colour.upper()}"] = colour.upper()
    meta = json.loads((CAMVID / "classes.json").read_text())
    classes = meta["classes"]
    rng = np.random.default_rng(args.seed)
    fills = {name: drawn_fill(c) for name, c in colours.items()}
    records = []  # per point: image index, kind, true class, surround colour, colour under the point
    images = []
    for split in args.splits:
        for path in sorted((CAMVID / split / "images").glob("*.jpg")):
            image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
            label = np.asarray(Image.open(CAMVID / split / "labels" / f"{path.stem}.png"))
            height, width = label.shape
            radius = args.point_size / 100 * width  # the disc's radius in image pixels at any zoom
            ring = ring_offsets(radius)
            margin = int(np.abs(ring).max()) + 1
            index = len(images)
            images.append((f"{split}/{path.name}", float(luminance(image).mean())))
            kinds = {"random": sample_points(rng, np.ones_like(label, dtype=bool), args.points, margin),
                     "border": sample_points(rng, border_mask(label, BORDER_RADIUS, len(classes)), args.points,
                                             margin)}
            linear = to_linear(image)
            for kind, points in kinds.items():
                if len(points) == 0:
                    continue
                around = linear[points[:, :1] + ring[None, :, 0], points[:, 1:] + ring[None, :, 1]].mean(axis=1)
                for (row, col), surround in zip(points, to_srgb(around), strict=True):
                    records.append((index, kind, int(label[row, col]), surround, image[row, col]))
    index = np.array([r[0] for r in records])
    kind = np.array([r[1] for r in records])
    truth = np.array([r[2] for r in records])
    surround = np.array([r[3] for r in records])
    under = np.array([r[4] for r in records])
    brightness = np.array([b for _, b in images])
    dark_cut, bright_cut = np.quantile(brightness, [0.25, 0.75])
    scene = np.where(brightness[index] <= dark_cut, "dark", np.where(brightness[index] >= bright_cut, "bright", "mid"))
    surround_lab = lab(surround)
    results = {}
    for name, fill in fills.items():
        seen = OPACITY * fill + (1 - OPACITY) * under  # the disc over the pixel under it
        de = ciede2000(lab(seen), surround_lab)
        ratio = contrast_ratio(seen, surround)
        hard = (de < HARD_DE) & (ratio < HARD_RATIO)
        base = name.split(" as ")[0]
        own = truth == classes.index(base) if base in classes else np.zeros_like(hard)
        per_image = np.bincount(index, weights=hard, minlength=len(images)) / np.maximum(
            np.bincount(index, minlength=len(images)), 1)
        worst = np.argsort(-per_image)[:3]
        results[name] = {
            "colour": colours[name], "fill": "#{:02X}{:02X}{:02X}".format(*fill.astype(int)),
            "de_median": float(np.median(de)), "de_p5": float(np.percentile(de, 5)),
            "ratio_median": float(np.median(ratio)), "below_3": float((ratio < 3).mean()),
            "hard": float(hard.mean()), "hard_random": float(hard[kind == "random"].mean()),
            "hard_border": float(hard[kind == "border"].mean()),
            "hard_own": float(hard[own].mean()) if own.any() else None, "own_points": int(own.sum()),
            "hard_dark": float(hard[scene == "dark"].mean()), "hard_bright": float(hard[scene == "bright"].mean()),
            "worst_images": [(images[i][0], float(per_image[i])) for i in worst],
            "hard_on": {(classes[c] if c < len(classes) else "void"): float(n / max(hard.sum(), 1)) for c, n in
                        enumerate(np.bincount(truth[hard], minlength=len(classes) + 1)) if n},
        }
    return {"results": results, "points": len(records), "images": len(images), "splits": args.splits,
            "point_size": args.point_size, "dark_cut": float(dark_cut), "bright_cut": float(bright_cut)}


HEADER = ("| label | colour | DE00 median / 5th pct | ratio median | ratio < 3 | hard to see (all) | on borders | "
          "on its own class (points) | dark / bright scenes |\n|---|---|---|---|---|---|---|---|---|")


def markdown(m: dict, args: argparse.Namespace) -> str:
    rows = []
    for name, r in sorted(m["results"].items(), key=lambda kv: (" as " in kv[0], -kv[1]["hard"])):
        own = "-" if r["hard_own"] is None else f"{100 * r['hard_own']:.0f} % ({r['own_points']})"
        rows.append(f"| {name} | `{r['colour']}` | {r['de_median']:.0f} / {r['de_p5']:.1f} | {r['ratio_median']:.1f} | "
                    f"{100 * r['below_3']:.0f} % | **{100 * r['hard']:.1f} %** | {100 * r['hard_border']:.1f} % | "
                    f"{own} | {100 * r['hard_dark']:.1f} % / {100 * r['hard_bright']:.1f} % |")
    worst = sorted(((r["hard"], n) for n, r in m["results"].items() if " as " not in n), reverse=True)[:3]
    worst_images = "; ".join(f"{n}: " + ", ".join(f"`{img}` {100 * s:.0f} %" for img, s in
                                                   m["results"][n]["worst_images"][:2]) for _, n in worst)
    command = (f".venv/bin/python benchmarks/point_contrast.py --config {args.config_rel} --points {args.points} "
               f"--splits {' '.join(args.splits)}" + "".join(f" --try {t}" for t in args.try_colours))
    return f"""## Keypoint colours: how visible each class colour is on CamVid

`{command}` (seed {args.seed}; {m['images']} images, {m['points']} points, half uniform random like round 0, half
on class borders like later rounds' entropy queries). Each colour is drawn as Label Studio 1.23.2 draws a labelled
keypoint (disc of radius POINT_SIZE = {m['point_size']} % of the image width, fill = the label colour darkened by 0.3
at opacity 0.9, 1-pixel outline in the label colour; checked against the browser's circles by
tests/test_annotator_browser.py) and compared with the mean colour of the ring 1 to 2 radii around the disc.
DE00 = CIEDE2000 difference; ratio = WCAG 2 contrast ratio (luminance; WCAG 2.1 asks >= 3 for graphics).
**Hard to see** = DE00 < {HARD_DE:.0f} and ratio < {HARD_RATIO} (no clear hue or lightness step). Dark / bright
scenes = the quarter of images with the lowest / highest mean luminance.

{HEADER}
{chr(10).join(rows)}

Worst images (share of hard-to-see points): {worst_images}.

{reading(m)}
"""


def reading(m: dict) -> str:
    """What the table says, in words (worst configured colour, the candidates measured with --try)."""
    configured = {n: r for n, r in m["results"].items() if " as " not in n}
    name, worst = max(configured.items(), key=lambda kv: kv[1]["hard"])
    ratios = [r["ratio_median"] for n, r in configured.items() if n != "ignore"]
    text = (f"**Reading.** The configured colour hardest to see is `{name}` ({worst['colour']}): "
            f"{100 * worst['hard']:.1f} % of its points ({100 * worst['hard_bright']:.1f} % on bright scenes, "
            f"{100 * worst['hard_dark']:.1f} % on dark ones). Luminance contrast is low for most class colours "
            f"(median ratio {min(ratios):.1f} to {max(ratios):.1f}): they are dark mid-tones like CamVid's streets, "
            "and their hue carries them. Label Studio 1.23.2 has no outline option for labelled keypoints "
            "(`strokeColor` applies to unlabelled ones only; the outline is the label colour), so the fix for a "
            "colour that vanishes is the colour itself.")
    tried = {n: r for n, r in m["results"].items() if " as " in n}
    if tried:
        text += " Measured alternatives: " + "; ".join(
            f"{n}: {100 * r['hard']:.1f} % hard, {100 * r['hard_bright']:.1f} % on bright scenes, ratio median "
            f"{r['ratio_median']:.1f}" for n, r in tried.items()) + "."
    if worst["hard"] > 0.05:
        text += f" `{name}` needs another point colour (the mask can keep the dataset's: tests/test_label_configs.py)."
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "label_config" / "camvid.xml"))
    p.add_argument("--splits", nargs="+", default=["train", "val"])
    p.add_argument("--points", type=int, default=60, help="points per image and kind (random, border)")
    p.add_argument("--point-size", type=float, default=Config().point_size, help="POINT_SIZE, percent of width")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--try", dest="try_colours", action="append", default=[], metavar="LABEL=#RRGGBB",
                   help="also measure a label in another colour (rows 'LABEL as #RRGGBB'); repeatable")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--no-docs", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = p.parse_args(argv)
    if not (CAMVID / "classes.json").is_file():
        print(f"no CamVid at {CAMVID}: nothing measured")
        return 0
    config = Path(args.config).resolve()
    args.config_rel = config.relative_to(ROOT).as_posix() if config.is_relative_to(ROOT) else str(config)
    m = measure(args)
    text = markdown(m, args)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(m, indent=1))
    if not args.no_docs:
        write_section("POINT-CONTRAST", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
