"""The loop study of docs/drift.md on the miniature Stable Diffusion: the diffusion loop
(self_consuming_loop.py --generator diffusion --prompts dataset) in the three regimes, each
without and with FRESH real data, LoRA fine-tuning, GENERATIONS generations, one loop per seed;
plus the replace loop fine-tuning the whole UNet. Every loop runs as a user runs it (resumable), two
at a time. Then the seed's CLIP-space figures (joint t-SNE and metric bars) of generations 0, 4 and
the last of seed 0's replace loop, with the small CLIP, and the table of every configuration (mean
± sd over seeds, compare_loops.py's), beside the GAN loops of the same data folder when there are.

Scaled to fit 2 hours on 2 CPU cores (the stage's defaults draw 100 prompts at 50 steps and
fine-tune 5 epochs): PROMPTS prompts drawn with STEPS DDIM steps, SD_EPOCHS fine-tuning epochs per
generation. The miniature pipeline is bench_small_sd.py's (trained there when missing).

    python bench/bench_sd_loop_study.py
"""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_common import ROOT, flag_words, load_text, run_script  # noqa: E402
from dataio.artifacts import ensure_output_dir  # noqa: E402
from reporting.figures import save_and_close  # noqa: E402
from reporting.loop_comparison import comparison_table, loop_results, metrics_figure  # noqa: E402
from runtime.settings import configure, pick  # noqa: E402
from runtime.stage import StageError, run_stage  # noqa: E402

# ---------------------------------------------------------------- settings
DATASET = "fashion-mnist"  # dataset of the loops [in dataio.data_sources.DATASETS]
DATA_DIR = "data/bench_small_sd"  # the pipeline, the CLIP, every loop's folders and results
SEEDS = (0, 1, 2)  # one loop per seed and configuration [seed]
GENERATIONS = 10  # generations after the first [>= 1]
FRESH = 0.2  # the fresh-data configurations' share of fresh real images [> 0, <= 1]
PROMPTS = 200  # prompts drawn and scored per generation (test images' captions) [>= 10]
STEPS = 20  # DDIM steps per image [>= 1]
SD_EPOCHS = 2  # fine-tuning epochs per generation [>= 1]
FULL = True  # also the replace loop fine-tuning the whole UNet
PARALLEL = 2  # loops run at once (one CPU thread each) [>= 1]
STAGE_ARGS = "--kid-subsets 20 --bootstrap 0 --sd-batch-size 16"  # more loop flags
FIGURE_GENERATIONS = (0, 4, 10)  # generations of the CLIP-space figures [>= 0]
# ---------------------------------------------------------------- end of settings


@dataclass(frozen=True)
class SdStudy:
    """This benchmark's settings, as main passes them down."""

    dataset: str
    data_dir: str
    seeds: tuple[int, ...]
    generations: int
    fresh: float
    prompts: int
    steps: int
    sd_epochs: int
    full: bool
    parallel: int
    stage_args: str
    figure_generations: tuple[int, ...]


def configurations(b: SdStudy) -> list[tuple[str, list[str]]]:
    """(label, loop flags) of every loop of the study."""
    configs = [(f"{regime}{f', {b.fresh:.0%} fresh' if fresh else ''}",
                ["--regime", regime, "--fresh-fraction", str(fresh)])
               for regime in ("replace", "accumulate", "accumulate-subsample")
               for fresh in (0.0, b.fresh)]
    if b.full:
        configs.append(("replace, whole UNet", ["--regime", "replace", "--finetune", "full"]))
    return configs


def run_loop(flags: list[str], seed: int, b: SdStudy, log: Path) -> float:
    """One loop as a user runs it (resumed when it has generations); its wall seconds."""
    pipeline = Path(b.data_dir) / "checkpoints" / f"sd_{b.dataset}"
    command = [sys.executable, str(ROOT / "self_consuming_loop.py"), "--generator", "diffusion",
               "--prompts", "dataset", "--dataset", b.dataset, "--data-dir", b.data_dir,
               "--pipeline", str(pipeline), "--seeds", str(seed), "--generations",
               str(b.generations), "--num-captions", str(b.prompts), "--steps", str(b.steps),
               "--sd-epochs", str(b.sd_epochs), "--threads", "1", *flags,
               *flag_words("--stage-args", b.stage_args)]
    started = time.time()
    with log.open("a") as output:
        code = subprocess.run(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT).returncode
    if code:
        raise StageError(f"{' '.join(command[1:])} failed (exit {code}); see {log}")
    return time.time() - started


def main(argv: list[str] | None = None) -> None:
    b = pick(SdStudy, configure(globals(), argv))
    flag_words("--stage-args", b.stage_args)  # checked before anything trains
    root = Path(b.data_dir)
    if not (root / "checkpoints" / f"sd_{b.dataset}" / "model_index.json").is_file():
        run_script("bench/bench_small_sd.py", "--dataset", b.dataset, "--data-dir", b.data_dir)
    logs = ensure_output_dir(root / "logs")
    configs = configurations(b)
    started = time.time()
    print(f"{len(configs)} configurations x {len(b.seeds)} seeds x {b.generations} generations "
          f"of the miniature SD on {b.dataset}: {b.prompts} prompts, {b.steps} DDIM steps, "
          f"{b.sd_epochs} fine-tuning epochs; {load_text()}", flush=True)
    with ThreadPoolExecutor(b.parallel) as pool:
        jobs = {(label, seed): pool.submit(run_loop, flags, seed, b,
                                           logs / f"sd_{index}_seed{seed}.log")
                for seed in b.seeds for index, (label, flags) in enumerate(configs)}
        for (label, seed), job in jobs.items():
            print(f"{label}, seed {seed}: {job.result():.0f} s", flush=True)
    total = time.time() - started
    runs, notes = loop_results(root / "results", b.dataset)
    for note in notes:
        print(f"warning: {note}")
    marks = sorted({0, b.generations // 2, b.generations})
    print(f"\n# Diffusion loops on {b.dataset}: mean ± sd over seeds "
          f"{', '.join(map(str, b.seeds))}; {total / 60:.0f} min in all\n")
    print(comparison_table(runs, marks))
    png = save_and_close(metrics_figure(runs, f"{b.dataset}: the miniature SD's loops"),
                         ensure_output_dir(root / "visualizations") / "sd_loop_study_metrics.png")
    replace_dir = root / f"{b.dataset}_loop_sd"
    wanted = ",".join(str(g) for g in b.figure_generations if g <= b.generations)
    clip = root / "checkpoints" / f"clip_{b.dataset}"
    run_script("extract_generation_embeddings.py", "--annotation-file",
               str(replace_dir / "captions.json"), "--generation-dir-pattern",
               str(replace_dir / "gen_{g}"), "--generations", wanted, "--num-captions",
               str(b.prompts), "--model", str(clip), "--output-dir",
               str(root / "embeddings" / "sd_replace"))
    run_script("plot_generation_clusters.py", "--generations", wanted, "--embedding-dir",
               str(root / "embeddings" / "sd_replace"), "--visualization-dir",
               str(root / "visualizations" / "sd_replace"), "--results-dir",
               str(root / "results" / "sd_replace"), "--reference-dir",
               str(root / f"{b.dataset}_loop_reference"))
    print(f"\nfigures: {png}, {root / 'visualizations' / 'sd_replace'}; logs in {logs}; "
          f"{load_text()}")


if __name__ == "__main__":
    run_stage(main, resumable=False)
