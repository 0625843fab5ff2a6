"""Throughput of dmt_privacy.modify: words/s, megapixels/s, seconds of audio per second.

Baselines from the same run, where they install from PyPI and run offline:

- text: nlpaug's ``SynonymAug(aug_src='wordnet')``. Its POS tagger
  (``nltk.pos_tag``) needs the averaged-perceptron data, which is not on hand
  offline, so it is stubbed with a tagger that calls every word a noun:
  nlpaug's figure leaves tagging out and is an upper bound on its speed.
- images: Pillow's ``ImageFilter.GaussianBlur`` and ``ImageEnhance`` (which has
  no hue). torchvision is not measured: the wheel that matches this project's
  local torch build fails to load its C++ operators here.
- audio: nlpaug's ``PitchAug``, ``SpeedAug`` and ``NoiseAug`` (librosa inside too).

Each figure is the best of ``REPEATS`` timed runs after one warm-up run (the
first pass over text also fills the per-word WordNet cache: it is reported
separately as "cold"). Writes modify_throughput.json and modify_throughput.png
into ``--output`` (default benchmarks/results); prints a table.

Run from the checkout (WordNet from ``make wordnet`` is found in ./nltk_data):
``.venv/bin/python benchmarks/modify_throughput.py`` (``--plot-only`` redraws the
plot from the saved JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
REPEATS = 3
SR = 16_000

PASSAGE = """\
Alice Johnson moved to Paris in the spring. She works as a nurse at a small hospital near
the river, and every morning she walks along the quiet bank to reach the ward. The building
is old but bright; large windows face the water. Her colleague says the patients sleep
better in that light. In the evening she reads history books, writes long letters to her
brother, and cooks simple dinners: soup, fresh bread, a green salad. On weekends the two
friends travel by train to the coast, where they hike across steep cliffs, watch the waves
break on the rocks and talk about their plans. Last year she bought a bicycle, repaired an
ancient clock and planted a garden full of herbs. The neighbours admire the flowers; a
child from the next house often asks for a cutting. She answers every question with
patience, because she believes that a kind word can change a difficult day. The city is
loud and expensive, yet she loves its markets, its music and the strange mixture of old
stone and new glass. Someday she hopes to open a clinic of her own in a quiet village.
"""


def best_time(run: Callable[[], Any], repeats: int = REPEATS) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def text_corpus(n_texts: int = 400) -> list[str]:
    """Sentences of the passage, shuffled into texts of 3 to 6 sentences (seeded)."""
    import re

    sentences = [s.strip().replace("\n", " ") for s in re.split(r"(?<=[.;:])\s+", PASSAGE)]
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(sentences, size=int(rng.integers(3, 7))))
            for _ in range(n_texts)]


def bench_text() -> list[dict[str, Any]]:
    from dmt_privacy.modify import SynonymReplacer
    from dmt_privacy.modify.text import _WORD, _analyse
    from dmt_privacy.modify.wordnet import load_wordnet

    corpus = text_corpus()
    n_words = sum(len(_WORD.findall(t)) for t in corpus)
    load_wordnet()
    replacer = SynonymReplacer(0.2, random_state=0)
    _analyse.cache_clear()
    start = time.perf_counter()
    replacer.transform(corpus)
    cold = time.perf_counter() - start
    warm = best_time(lambda: replacer.transform(corpus))
    rows = [
        {"modality": "text", "tool": "dmt", "operation": "SynonymReplacer rate=0.2, cold cache",
         "unit": "words/s", "value": n_words / cold},
        {"modality": "text", "tool": "dmt", "operation": "SynonymReplacer rate=0.2",
         "unit": "words/s", "value": n_words / warm},
    ]
    try:
        import nlpaug.augmenter.word as naw
        from nlpaug.model.word_dict.wordnet import WordNet
    except ImportError as exc:
        print(f"nlpaug baseline skipped: {exc}")
        return rows
    WordNet.pos_tag = classmethod(lambda cls, tokens: [(t, "NN") for t in tokens])
    aug = naw.SynonymAug(aug_src="wordnet", aug_p=0.2, aug_max=None)
    rows.append({"modality": "text", "tool": "nlpaug 1.1.11",
                 "operation": "SynonymAug wordnet aug_p=0.2 (POS tagger stubbed)",
                 "unit": "words/s", "value": n_words / best_time(lambda: aug.augment(corpus))})
    return rows


def bench_images() -> list[dict[str, Any]]:
    from PIL import Image, ImageEnhance, ImageFilter

    from dmt_privacy.modify import ColorCorrection, GaussianBlur, ImageNoise

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(512, 512, 3), dtype=np.uint8) for _ in range(8)]
    pil_images = [Image.fromarray(i) for i in images]
    megapixels = sum(i.shape[0] * i.shape[1] for i in images) / 1e6
    ours = {
        "GaussianBlur sigma=2": GaussianBlur(2.0),
        "ColorCorrection brightness+contrast+saturation+hue":
            ColorCorrection(brightness=0.05, contrast=1.2, saturation=0.8, hue=15.0),
        "ColorCorrection brightness+contrast+saturation":
            ColorCorrection(brightness=0.05, contrast=1.2, saturation=0.8),
        "ImageNoise std=0.05": ImageNoise(0.05, random_state=0),
    }
    rows = []
    for name, modifier in ours.items():
        seconds = best_time(lambda m=modifier: m.transform(images))
        rows.append({"modality": "image", "tool": "dmt", "operation": name + " (uint8 arrays)",
                     "unit": "MP/s", "value": megapixels / seconds})
    seconds = best_time(lambda: ours["GaussianBlur sigma=2"].transform(pil_images))
    rows.append({"modality": "image", "tool": "dmt", "operation": "GaussianBlur sigma=2 (Pillow)",
                 "unit": "MP/s", "value": megapixels / seconds})

    def pil_blur() -> None:
        for i in pil_images:
            i.filter(ImageFilter.GaussianBlur(2))

    def pil_colour() -> None:
        for i in pil_images:
            out = ImageEnhance.Brightness(i).enhance(1.1)
            out = ImageEnhance.Contrast(out).enhance(1.2)
            ImageEnhance.Color(out).enhance(0.8)

    rows.append({"modality": "image", "tool": f"Pillow {Image.__version__}",
                 "operation": "ImageFilter.GaussianBlur(2) (box approximation)",
                 "unit": "MP/s", "value": megapixels / best_time(pil_blur)})
    rows.append({"modality": "image", "tool": f"Pillow {Image.__version__}",
                 "operation": "ImageEnhance brightness+contrast+colour",
                 "unit": "MP/s", "value": megapixels / best_time(pil_colour)})
    return rows


def bench_audio() -> list[dict[str, Any]]:
    from dmt_privacy.modify import AudioNoise, PitchShift, TempoChange

    rng = np.random.default_rng(0)
    t = np.arange(5 * SR) / SR
    clips = [(0.3 * np.sin(2 * np.pi * f * t) + 0.05 * rng.standard_normal(t.size))
             .astype(np.float32) for f in rng.uniform(100, 400, size=10)]
    audio_seconds = sum(len(c) for c in clips) / SR
    ours = {"PitchShift +2 semitones": PitchShift(2.0, sample_rate=SR),
            "TempoChange rate=1.1": TempoChange(1.1, sample_rate=SR),
            "AudioNoise snr_db=20": AudioNoise(20.0, random_state=0)}
    rows = []
    for name, modifier in ours.items():
        seconds = best_time(lambda m=modifier: m.transform(clips))
        rows.append({"modality": "audio", "tool": "dmt", "operation": name,
                     "unit": "audio s/s", "value": audio_seconds / seconds})
    try:
        import nlpaug
        import nlpaug.augmenter.audio as naa
    except ImportError as exc:
        print(f"nlpaug audio baseline skipped: {exc}")
        return rows
    theirs = {"PitchAug factor=2": naa.PitchAug(sampling_rate=SR, factor=(2, 2), zone=(0, 1)),
              "SpeedAug factor=1.1": naa.SpeedAug(factor=(1.1, 1.1), zone=(0, 1)),
              "NoiseAug white": naa.NoiseAug(zone=(0, 1))}
    for name, aug in theirs.items():
        seconds = best_time(lambda a=aug: [a.augment(c) for c in clips])
        rows.append({"modality": "audio", "tool": f"nlpaug {nlpaug.__version__}",
                     "operation": name, "unit": "audio s/s", "value": audio_seconds / seconds})
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """One panel per modality, linear axes from 0 so bar lengths compare, each bar labelled."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return
    modalities = ("text", "image", "audio")
    panels = [[r for r in rows if r["modality"] == m] for m in modalities]
    fig, axes = plt.subplots(3, 1, figsize=(10, 10.5),
                             height_ratios=[max(len(p), 1) + 1 for p in panels])
    for ax, modality, sub in zip(axes, modalities, panels, strict=True):
        labels = [f"{r['tool']}: {r['operation']}" for r in sub]
        values = [r["value"] for r in sub]
        colours = ["tab:blue" if r["tool"] == "dmt" else "tab:grey" for r in sub]
        ax.barh(range(len(sub)), values, color=colours)
        ax.set_yticks(range(len(sub)), labels, fontsize=8)
        top = max(values, default=1.0)
        for y, value in enumerate(values):
            ax.text(value + top * 0.01, y, f"{value:,.0f}" if value >= 100 else f"{value:.1f}",
                    va="center", fontsize=8)
        ax.set_xlim(0, top * 1.12)
        ax.xaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel(f"{sub[0]['unit'] if sub else ''} (higher is faster)")
        ax.set_title(modality, loc="left", fontweight="bold")
        ax.invert_yaxis()
    fig.suptitle("dmt_privacy.modify throughput (blue: dmt, grey: baselines; best of "
                 f"{REPEATS} runs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=RESULTS,
                        help="folder for the results (default benchmarks/results)")
    parser.add_argument("--plot-only", action="store_true",
                        help="redraw the plot from OUTPUT/modify_throughput.json")
    args = parser.parse_args()
    if args.plot_only:
        saved = json.loads((args.output / "modify_throughput.json").read_text())
        plot(saved["rows"], args.output / "modify_throughput.png")
        print(f"drew {args.output / 'modify_throughput.png'}")
        return
    os.environ.setdefault("NLTK_DATA", str(ROOT / "nltk_data"))
    rows = bench_text() + bench_images() + bench_audio()
    width = max(len(f"{r['tool']} | {r['operation']}") for r in rows)
    print(f"{'modality':8} {'tool | operation':{width}} {'throughput':>14}")
    for r in rows:
        label = f"{r['tool']} | {r['operation']}"
        print(f"{r['modality']:8} {label:{width}} {r['value']:>10.1f} {r['unit']}")
    args.output.mkdir(parents=True, exist_ok=True)
    result = {"machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                          "platform": platform.platform()},
              "repeats": REPEATS, "rows": rows}
    (args.output / "modify_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, args.output / "modify_throughput.png")
    print(f"wrote {args.output / 'modify_throughput.json'} and modify_throughput.png")


if __name__ == "__main__":
    main()
