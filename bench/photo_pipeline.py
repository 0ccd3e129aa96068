"""Photo pipeline benchmark: naive Pillow vs parcelbox's pipeline variants vs the floor, in one run.

    .venv/bin/python bench/photo_pipeline.py [--rounds 7] [--photos DIR]

Uses ../shared/photos (*_uxga.jpg, *_svga.jpg) when present, else generated photo-like JPEGs. Variants
are interleaved photo by photo in a shuffled order each round, so a noisy machine slows all of them
alike; each figure is the median over rounds per photo, averaged over the photos of a size class.
Quality is SSIM (grayscale, 7x7 window, like scikit-image's default) of each variant's alert copy
against a LANCZOS reference made from the full-resolution decode at the same output size.
Results: bench/results/photo_pipeline.json.
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import SHARED_DIR, machine_info, median, print_table, timed, write_json  # noqa: E402
from gateway.photos import PhotoSettings, jpeg_header, process_photo, simplejpeg_available  # noqa: E402

ALERT = 1280
THUMB = 320
CAPTION = "Front gate box · 22 Nov 2026 10:41"


# --- SSIM ----------------------------------------------------------------------------------------


def _box_mean(a: np.ndarray, win: int) -> np.ndarray:
    """Mean over every win x win window (valid region only), via an integral image."""
    s = np.cumsum(np.cumsum(a, axis=0), axis=1)
    s = np.pad(s, ((1, 0), (1, 0)))
    total = s[win:, win:] - s[:-win, win:] - s[win:, :-win] + s[:-win, :-win]
    return total / (win * win)


def ssim(x: Image.Image, y: Image.Image, win: int = 7) -> float:
    """Mean structural similarity of two same-size images, on grayscale (Wang et al. 2004)."""
    assert x.size == y.size, (x.size, y.size)
    a = np.asarray(x.convert("L"), dtype=np.float64)
    b = np.asarray(y.convert("L"), dtype=np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    cov_norm = win * win / (win * win - 1)  # sample covariance, as scikit-image does
    ma, mb = _box_mean(a, win), _box_mean(b, win)
    va = cov_norm * (_box_mean(a * a, win) - ma * ma)
    vb = cov_norm * (_box_mean(b * b, win) - mb * mb)
    vab = cov_norm * (_box_mean(a * b, win) - ma * mb)
    s = ((2 * ma * mb + c1) * (2 * vab + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))
    return float(s.mean())


# --- variants ------------------------------------------------------------------------------------


def _fit(size: tuple[int, int], long_edge: int) -> tuple[int, int]:
    scale = min(1.0, long_edge / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _save(im: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    im.save(out, "JPEG", quality=quality, optimize=True)
    return out.getvalue()


def naive(data: bytes) -> tuple[bytes, bytes]:
    """What one writes first: full decode, LANCZOS to 1280, thumbnail from the original, encode."""
    im = Image.open(io.BytesIO(data))
    im.load()
    im = im.convert("RGB")
    alert = im.resize(_fit(im.size, ALERT), Image.Resampling.LANCZOS)
    thumb = im.resize(_fit(im.size, THUMB), Image.Resampling.LANCZOS)
    return _save(alert, 80), _save(thumb, 70)


def pipeline(settings: PhotoSettings, caption: str | None = None) -> Callable[[bytes], tuple[bytes, bytes]]:
    def run(data: bytes) -> tuple[bytes, bytes]:
        result = process_photo(data, settings, caption)
        return result.alert_jpeg, result.thumb_jpeg

    return run


def floor_decode(data: bytes) -> None:
    """Floor, part 1: a full-resolution decode and nothing else."""
    Image.open(io.BytesIO(data)).load()


def floor_encode_for(images: dict[bytes, Image.Image]) -> Callable[[bytes], bytes]:
    """Floor, part 2: encoding an already-made alert-size image (what any pipeline must still do)."""

    def run(data: bytes) -> bytes:
        return _save(images[data], 80)

    return run


# --- inputs --------------------------------------------------------------------------------------


def generated_photos() -> dict[str, bytes]:
    """Photo-like JPEGs (gradients, texture, edges) at UXGA and SVGA, 4:2:2, quality 85, like an OV2640."""
    rng = random.Random(4)
    photos = {}
    for n in range(6):
        base = Image.effect_noise((1600, 1200), 40 + 10 * n).convert("RGB")
        grad = Image.linear_gradient("L").resize((1600, 1200))
        im = Image.merge("RGB", (grad, base.getchannel(0), grad.transpose(Image.Transpose.FLIP_TOP_BOTTOM)))
        draw = ImageDraw.Draw(im)
        for _ in range(40):
            x, y = rng.randrange(1600), rng.randrange(1200)
            draw.ellipse(
                (x, y, x + rng.randrange(20, 400), y + rng.randrange(20, 300)),
                fill=tuple(rng.choices(range(256), k=3)),
            )
        im = im.filter(ImageFilter.GaussianBlur(1.2))
        for suffix, size in (("uxga", (1600, 1200)), ("svga", (800, 600))):
            out = io.BytesIO()
            im.resize(size, Image.Resampling.LANCZOS).save(out, "JPEG", quality=85, subsampling=1)
            photos[f"generated{n}_{suffix}.jpg"] = out.getvalue()
    return photos


def load_photos(folder: Path | None) -> tuple[str, dict[str, bytes]]:
    folder = folder or SHARED_DIR / "photos"
    files = sorted(folder.glob("*_uxga.jpg")) + sorted(folder.glob("*_svga.jpg")) if folder.is_dir() else []
    if files:
        return str(folder), {f.name: f.read_bytes() for f in files}
    return "generated", generated_photos()


# --- run -----------------------------------------------------------------------------------------


def throughput(datas: list[bytes], workers: int, pool_kind: str, repeat: int) -> float:
    """Photos per second through process_photo with a pool of ``workers`` (the gateway's setup)."""
    work = datas * repeat
    pool_cls = ThreadPoolExecutor if pool_kind == "threads" else ProcessPoolExecutor
    with pool_cls(max_workers=workers) as pool:
        list(pool.map(process_photo, datas, [PhotoSettings()] * len(datas)))  # warm up workers
        start = time.perf_counter()
        list(pool.map(process_photo, work, [PhotoSettings()] * len(work), [CAPTION] * len(work)))
        return len(work) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--photos", type=Path, default=None, help="folder of *_uxga.jpg / *_svga.jpg")
    parser.add_argument("--no-throughput", action="store_true", help="skip the worker-pool throughput runs")
    args = parser.parse_args(argv)

    source, photos = load_photos(args.photos)
    names = list(photos)
    variants: dict[str, Callable[[bytes], object]] = {"naive": naive}
    if simplejpeg_available():
        variants["simplejpeg"] = pipeline(PhotoSettings())
        variants["simplejpeg+caption"] = pipeline(PhotoSettings(), CAPTION)
        variants["simplejpeg exact 1280"] = pipeline(PhotoSettings(alert_min_fill=1.0))
        variants["simplejpeg progressive"] = pipeline(PhotoSettings(progressive=True))
        variants["simplejpeg optimize alert"] = pipeline(PhotoSettings(optimize_alert=True))
    variants["draft (Pillow only)"] = pipeline(PhotoSettings(decoder="pillow"))
    variants["draft 1/2 (Pillow only)"] = pipeline(PhotoSettings(decoder="pillow", alert_min_fill=0.6))
    variants["floor: decode"] = floor_decode
    alert_size_images = {}
    for data in photos.values():
        full = Image.open(io.BytesIO(data)).convert("RGB")
        alert_size_images[data] = full.resize(_fit(full.size, ALERT), Image.Resampling.LANCZOS)
    variants["floor: encode"] = floor_encode_for(alert_size_images)

    # Warm up every variant once (imports, font loading, caches) before timing.
    for fn in variants.values():
        fn(photos[names[0]])

    times: dict[str, dict[str, list[float]]] = {v: {n: [] for n in names} for v in variants}
    outputs: dict[str, dict[str, object]] = {v: {} for v in variants}
    rng = random.Random(1)
    print(
        f"{len(names)} photos from {source}, {args.rounds} rounds, {len(variants)} variants interleaved ...",
        flush=True,
    )
    for _ in range(args.rounds):
        for name in rng.sample(names, len(names)):
            order = list(variants)
            rng.shuffle(order)
            for v in order:
                ms, out = timed(lambda v=v, name=name: variants[v](photos[name]))
                times[v][name].append(ms)
                outputs[v][name] = out

    # Quality: SSIM of the alert copy (and thumbnail) vs LANCZOS from the full decode at the same size.
    quality: dict[str, dict[str, dict[str, float]]] = {}
    for v in variants:
        if v.startswith("floor"):
            continue
        quality[v] = {}
        for name in names:
            alert_bytes, thumb_bytes = outputs[v][name]
            full = Image.open(io.BytesIO(photos[name])).convert("RGB")
            alert = Image.open(io.BytesIO(alert_bytes))
            thumb = Image.open(io.BytesIO(thumb_bytes))
            quality[v][name] = {
                "ssim_alert": ssim(alert, full.resize(alert.size, Image.Resampling.LANCZOS)),
                "ssim_thumb": ssim(thumb, full.resize(thumb.size, Image.Resampling.LANCZOS)),
                "alert_size": list(alert.size),
                "bytes_in": len(photos[name]),
                "bytes_alert": len(alert_bytes),
                "bytes_thumb": len(thumb_bytes),
            }

    groups = {g: [n for n in names if f"_{g}." in n] for g in ("uxga", "svga")}
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for group, members in groups.items():
        if not members:
            continue
        summary[group] = {}
        naive_ms = sum(median(times["naive"][n]) for n in members) / len(members)
        for v in variants:
            ms = sum(median(times[v][n]) for n in members) / len(members)
            row: dict[str, float] = {"ms_per_photo": ms, "speedup_vs_naive": naive_ms / ms}
            if v in quality:
                q = [quality[v][n] for n in members]
                row["ssim_alert_mean"] = sum(x["ssim_alert"] for x in q) / len(q)
                row["ssim_alert_min"] = min(x["ssim_alert"] for x in q)
                row["ssim_thumb_mean"] = sum(x["ssim_thumb"] for x in q) / len(q)
                row["bytes_out_over_in"] = sum(x["bytes_alert"] + x["bytes_thumb"] for x in q) / sum(
                    x["bytes_in"] for x in q
                )
                row["alert_size"] = "x".join(map(str, q[0]["alert_size"]))
            summary[group][v] = row
        floor = (
            summary[group]["floor: decode"]["ms_per_photo"] + summary[group]["floor: encode"]["ms_per_photo"]
        )
        summary[group]["floor: decode + encode"] = {
            "ms_per_photo": floor,
            "speedup_vs_naive": naive_ms / floor,
        }

    for group, rows in summary.items():
        print(
            f"\n{group} ({len(groups[group])} photos): ms per photo = mean over photos of the median of {args.rounds} rounds"
        )
        print_table(
            [
                "variant",
                "ms/photo",
                "x naive",
                "alert size",
                "SSIM mean",
                "SSIM min",
                "thumb SSIM",
                "bytes out/in",
            ],
            [
                [
                    v,
                    r["ms_per_photo"],
                    r["speedup_vs_naive"],
                    r.get("alert_size", ""),
                    f"{r['ssim_alert_mean']:.4f}" if "ssim_alert_mean" in r else "",
                    f"{r['ssim_alert_min']:.4f}" if "ssim_alert_min" in r else "",
                    f"{r['ssim_thumb_mean']:.4f}" if "ssim_thumb_mean" in r else "",
                    f"{r['bytes_out_over_in']:.3f}" if "bytes_out_over_in" in r else "",
                ]
                for v, r in rows.items()
            ],
        )

    pools: dict[str, float] = {}
    if not args.no_throughput:
        uxga = [photos[n] for n in groups["uxga"]] or list(photos.values())
        print("\nthroughput, UXGA with caption, default settings (photos/s):")
        for kind, workers in (("threads", 1), ("threads", 2), ("processes", 2)):
            pools[f"{kind} x{workers}"] = throughput(uxga, workers, kind, repeat=3)
            print(f"  {kind} x{workers}: {pools[f'{kind} x{workers}']:.1f}")

    versions = {"pillow": PIL.__version__, "numpy": np.__version__}
    try:
        import simplejpeg

        versions["simplejpeg"] = simplejpeg.__version__
    except ImportError:
        versions["simplejpeg"] = "not installed"
    path = write_json(
        "photo_pipeline",
        {
            "machine": machine_info(**versions),
            "source": source,
            "rounds": args.rounds,
            "input_kinds": sorted({jpeg_header(d).process for d in photos.values()}),
            "summary": summary,
            "throughput_photos_per_s": pools,
            "per_photo": {
                v: {n: {"ms_median": median(times[v][n]), **quality.get(v, {}).get(n, {})} for n in names}
                for v in variants
            },
        },
    )
    print(f"\nmachine: {machine_info(**versions)}\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
