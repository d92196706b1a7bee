"""How good is the miniature Stable Diffusion, and which sampler? Trains it as a user would (the
small CLIP first when missing, then train_small_sd.py, both resumable, their wall times kept), then
draws one image per prompt for the first PROMPTS test images (their class captions, the loop's
prompts) and scores each sampler side by side on the evaluator CNN's features against the test
images: FID (with the real-vs-real floor of as many training images), precision, recall and
class consistency, with the seconds each took. Compared: DDIM at 50 steps and guidance 7 (the
targets' setting), DPM-Solver++ at 20 steps, and DDIM without guidance (what guidance adds).

Targets (Fashion-MNIST): trained in at most 45 minutes on 2 CPU cores, FID at most 30 and class
consistency at least 0.80 at guidance 7 and 50 DDIM steps.

    python bench/bench_small_sd.py --prompts 1000
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_common import ROOT, flag_words, load_text, run_script  # noqa: E402
from dataio.data_sources import load_dataset  # noqa: E402
from evaluation import scoring  # noqa: E402
from runtime.settings import configure, pick  # noqa: E402
from runtime.stage import limit_cpu_threads, pick_device, run_stage  # noqa: E402
from stable_diffusion.miniature import from_pipeline_images  # noqa: E402
from stable_diffusion.pipelines import (  # noqa: E402
    default_image_size,
    draw,
    load_pipeline,
    use_sampler,
)

# ---------------------------------------------------------------- settings
DATASET = "fashion-mnist"  # dataset of the miniature [in dataio.data_sources.DATASETS]
DATA_DIR = "data/bench_small_sd"  # the CLIP, the pipeline and the evaluator
PROMPTS = 1000  # test images whose class captions are drawn, one image each [>= 10]
SD_ARGS = "--threads 2"  # more train_small_sd.py flags (both cores: it runs alone)
CLIP_ARGS = "--limit 20000 --threads 2"  # train_small_clip.py flags when the CLIP is missing
SEED = 0  # seeds the noise of every image and the floor [seed]
THREADS = 1  # CPU threads of torch (0: library default) [>= 0]
DEVICE = "auto"  # auto (cuda, then mps, then cpu), cuda, mps or cpu
BATCH_SIZE = 100  # prompts per pipeline call [>= 1]
# ---------------------------------------------------------------- end of settings

# (label, sampler, steps, guidance) of each row.
SAMPLINGS = (("DDIM 50 steps, guidance 7", "ddim", 50, 7.0),
             ("DPM-Solver++ 20 steps, guidance 7", "dpm-solver", 20, 7.0),
             ("DDIM 50 steps, no guidance", "ddim", 50, 1.0))


@dataclass(frozen=True)
class SmallSdBench:
    """This benchmark's settings, as main passes them down."""

    dataset: str
    data_dir: str
    prompts: int
    sd_args: str
    clip_args: str
    seed: int
    batch_size: int


def main(argv: list[str] | None = None) -> None:
    values = configure(globals(), argv)
    b = pick(SmallSdBench, values)
    sd_args, clip_args = flag_words("--sd-args", b.sd_args), flag_words("--clip-args",
                                                                         b.clip_args)
    limit_cpu_threads(values["threads"])
    device = pick_device(values["device"])
    root = ROOT / b.data_dir
    times = {}
    if not (root / "checkpoints" / f"clip_{b.dataset}" / "config.json").is_file():
        times["small CLIP"] = run_script("train_small_clip.py", "--dataset", b.dataset,
                                         "--data-dir", str(root), *clip_args)
    pipeline = root / "checkpoints" / f"sd_{b.dataset}"
    if not (pipeline / "model_index.json").is_file():
        times["miniature SD"] = run_script("train_small_sd.py", "--dataset", b.dataset,
                                           "--data-dir", str(root), *sd_args)
    meta = json.loads((pipeline / "training_meta.json").read_text())
    data = load_dataset(b.dataset, str(root))
    s = scoring.ScoringSettings(seed=b.seed, bootstrap=0, kid_subsets=20)
    real = scoring.real_images_for(data, device, scoring.EvaluatorSettings(data_dir=str(root)),
                                   s)
    scoring.real_image_floors(real, b.prompts, device, s)
    from clip_tools.captions import CAPTION_TEMPLATES, class_phrase

    labels = data.y_test[:b.prompts].astype(np.int64)
    choice = np.random.default_rng(b.seed).integers(len(CAPTION_TEMPLATES), size=b.prompts)
    captions = [CAPTION_TEMPLATES[t].format(class_phrase(data.name, data.class_names[c]))
                for t, c in zip(choice, labels, strict=True)]
    pipe = load_pipeline(str(pipeline), device)
    size = default_image_size(pipe)
    rows = []
    for label, sampler, steps, guidance in SAMPLINGS:
        use_sampler(pipe, sampler)
        started = time.perf_counter()
        with torch.no_grad():
            drawn = draw(pipe, captions, np.arange(b.prompts), b.seed, size, steps, guidance,
                         b.batch_size)
        seconds = time.perf_counter() - started
        images = from_pipeline_images(drawn, data.x_test.shape[1:])
        arrays = {"x_gen": images, "idx_src": np.arange(b.prompts, dtype=np.int64),
                  "y_src": labels}
        values_ = scoring.plan1_metrics(pipeline / f"{sampler}_{steps}.npz", arrays, real,
                                        device, s)
        rows.append((label, values_, seconds))
        print(f"{label}: FID {values_['fid']:.2f} (floor {values_['fid_floor']:.2f}), class "
              f"consistency {values_['class_consistency']:.3f}, {seconds:.0f} s", flush=True)
    trained = sum(times.values()) if times else meta.get("unet_seconds")
    print(f"\n# Miniature Stable Diffusion on {b.dataset}\n\n{b.prompts} images (one per test "
          f"prompt) against the {len(data.x_test)} test images, evaluator-CNN features; floor: "
          f"{b.prompts} real training images. Pipeline {pipeline} (epoch {meta['best_epoch']}, "
          f"held-out FID {meta['held_out_fid']}); training time: "
          + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items())
          + ("" if times else "trained before this run") + "\n")
    print("| sampling | FID (floor) | precision | recall | class consistency (real) | seconds "
          "|\n" + "| --- " * 6 + "|")
    for label, v, seconds in rows:
        print(f"| {label} | {v['fid']:.2f} ({v['fid_floor']:.2f}) | {v['precision']:.3f} | "
              f"{v['recall']:.3f} | {v['class_consistency']:.3f} "
              f"({v['class_consistency_real']:.3f}) | {seconds:.0f} |")
    target = rows[0][1]
    minutes = (times.get("miniature SD", 0) + times.get("small CLIP", 0)) / 60
    fid_met = "met" if target["fid"] <= 30 else "NOT met"
    print(f"\ntargets: FID {target['fid']:.2f} <= 30: {fid_met}; "
          f"class consistency {target['class_consistency']:.3f} >= 0.80: "
          f"{'met' if target['class_consistency'] >= 0.8 else 'NOT met'}; training "
          + (f"{minutes:.1f} min <= 45: {'met' if minutes <= 45 else 'NOT met'}"
             if times else "time: see the run that trained it")
          + f" (trained {trained}); {load_text()}")


if __name__ == "__main__":
    run_stage(main, resumable=False)
