"""A tiny synthetic Crello with the real v5 feature types (shared/docs/eval.md C.1, C.6).

Written by the test code, never downloaded: ClassLabel element types/fonts/alignments,
`Sequence(Image())` element pre-renders, float geometry in canvas pixels, nested per-character maps.
Stored with `to_parquet`, read back through `datasets`' generic Parquet loader, exactly the path the
real shards take.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

TYPES = ["SvgElement", "ImageElement", "TextElement", "ColoredBackground", "MaskElement"]
FONTS = ["Montserrat", "Roboto"]
ALIGNS = ["left", "center", "right"]


def features() -> Any:
    import datasets as ds

    seq = ds.Sequence
    return ds.Features(
        {
            "id": ds.Value("string"),
            "length": ds.Value("int64"),
            "group": ds.ClassLabel(names=["SM", "HC", "MM"]),
            "format": ds.ClassLabel(names=["Instagram", "Poster"]),
            "category": ds.ClassLabel(names=["holiday", "sale"]),
            "canvas_width": ds.Value("int64"),
            "canvas_height": ds.Value("int64"),
            "title": ds.Value("string"),
            "suitability": seq(ds.ClassLabel(names=["mobile"])),
            "keywords": seq(ds.Value("string")),
            "industries": seq(ds.ClassLabel(names=["retail", "food"])),
            "preview": ds.Image(),
            "cluster_index": ds.Value("int64"),
            "type": seq(ds.ClassLabel(names=TYPES)),
            "left": seq(ds.Value("float32")),
            "top": seq(ds.Value("float32")),
            "width": seq(ds.Value("float32")),
            "height": seq(ds.Value("float32")),
            "angle": seq(ds.Value("float32")),
            "opacity": seq(ds.Value("float32")),
            "color": seq(ds.Value("string")),
            "image": seq(ds.Image()),
            "text": seq(ds.Value("string")),
            "font": seq(ds.ClassLabel(names=FONTS)),
            "font_size": seq(ds.Value("float32")),
            "text_align": seq(ds.ClassLabel(names=ALIGNS)),
            "capitalize": seq(ds.Value("bool")),
            "line_height": seq(ds.Value("float32")),
            "letter_spacing": seq(ds.Value("float32")),
            "font_bold": seq(seq(ds.Value("bool"))),
            "font_italic": seq(seq(ds.Value("bool"))),
            "text_color": seq(seq(ds.Value("string"))),
            "text_line": seq(seq(ds.Value("int64"))),
        }
    )


def solid(w: int, h: int, rgb: tuple[int, int, int], alpha: int = 255) -> Image.Image:
    return Image.new("RGBA", (w, h), (*rgb, alpha))


def disc(d: int, rgb: tuple[int, int, int]) -> Image.Image:
    img = Image.new("RGBA", (d, d), (0, 0, 0, 0))
    ImageDraw.Draw(img).ellipse((0, 0, d - 1, d - 1), fill=(*rgb, 255))
    return img


def text_image(word: str) -> Image.Image:
    img = Image.new("RGBA", (60, 20), (0, 0, 0, 0))
    ImageDraw.Draw(img).text((2, 2), word, fill=(20, 20, 20, 255))
    img.putpixel((0, 0), (20, 20, 20, 255))  # at least one fully opaque pixel, like real glyphs
    return img


def element(
    type_: str,
    img: Image.Image,
    box: tuple[float, float, float, float],
    angle: float = 0.0,
    opacity: float = 1.0,
    text: str = "",
) -> dict[str, Any]:
    n = len(text)
    return {
        "type": TYPES.index(type_),
        "left": box[0],
        "top": box[1],
        "width": box[2],
        "height": box[3],
        "angle": angle,
        "opacity": opacity,
        "color": "rgba(0,0,0,1)",
        "image": img,
        "text": text,
        "font": 0,
        "font_size": 12.0 if text else 0.0,
        "text_align": 1,
        "capitalize": False,
        "line_height": 1.0,
        "letter_spacing": 0.0,
        "font_bold": [False] * n,
        "font_italic": [False] * n,
        "text_color": ["rgba(20,20,20,1)"] * n,
        "text_line": [0] * n,
    }


def row(design_id: str, w: int, h: int, elements: list[dict[str, Any]]) -> dict[str, Any]:
    r: dict[str, Any] = {
        "id": design_id,
        "length": len(elements),
        "group": 0,
        "format": 0,
        "category": 1,
        "canvas_width": w,
        "canvas_height": h,
        "title": f"design {design_id}",
        "suitability": [0],
        "keywords": ["test"],
        "industries": [1],
        "preview": solid(8, 8, (255, 255, 255)),
        "cluster_index": 0,
    }
    for key in element("SvgElement", solid(1, 1, (0, 0, 0)), (0, 0, 1, 1)):
        r[key] = [e[key] for e in elements]
    return r


def designs() -> list[dict[str, Any]]:
    """Five designs covering every rendering rule (eval.md A.1)."""
    return [
        # full background, two shapes, a rotated bar, a never-opaque overlay (dropped), text at 50%
        row(
            "full",
            200,
            100,
            [
                element("ColoredBackground", solid(10, 10, (30, 120, 200)), (0, 0, 200, 100)),
                element("SvgElement", solid(20, 10, (250, 200, 0)), (10, 20, 40, 30)),
                element("ImageElement", disc(32, (200, 30, 60)), (120, 10, 50, 50)),
                element("SvgElement", solid(40, 8, (0, 160, 60)), (60, 60, 80, 16), angle=90.0),
                element("SvgElement", solid(30, 30, (255, 255, 255), alpha=128), (0, 0, 200, 100)),
                element("TextElement", text_image("SALE"), (100, 70, 60, 20), opacity=0.5, text="SALE"),
            ],
        ),
        # bottom group does not cover the canvas → a white background layer is prepended
        row(
            "nobg",
            100,
            100,
            [
                element("SvgElement", solid(10, 10, (200, 0, 0)), (5, 5, 30, 30)),
                element("SvgElement", solid(10, 10, (0, 0, 200)), (50, 50, 30, 30)),
            ],
        ),
        # one opaque element only → skipped
        row("single", 100, 100, [element("SvgElement", solid(10, 10, (0, 0, 0)), (0, 0, 100, 100))]),
        # element 2 covers the canvas → elements 0 and 1 are hidden and dropped
        row(
            "covered",
            100,
            150,
            [
                element("ColoredBackground", solid(10, 10, (10, 10, 10)), (0, 0, 100, 150)),
                element("SvgElement", solid(10, 10, (200, 0, 0)), (5, 5, 30, 30)),
                element("ColoredBackground", solid(10, 10, (240, 240, 200)), (0, 0, 100, 150)),
                element("SvgElement", solid(10, 10, (0, 90, 0)), (20, 40, 20, 20)),
            ],
        ),
        # no opaque element at all → skipped
        row("faint", 100, 100, [element("SvgElement", solid(10, 10, (0, 0, 0), alpha=200), (0, 0, 50, 50))] * 2),
    ]


def write_parquet(directory: Path, split: str = "test") -> Path:
    """Write the fixture as one HF-style shard `<dir>/data/<split>-00000-of-00001.parquet`."""
    import datasets

    rows = designs()
    ds = datasets.Dataset.from_list(rows, features=features())
    path = Path(directory) / "data" / f"{split}-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path))
    return path


def expected_layers() -> dict[str, int]:
    """GT layer counts after LayerD's filtering, for the rendered designs."""
    return {"full": 5, "nobg": 3, "covered": 2}


def as_np(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGBA"))
