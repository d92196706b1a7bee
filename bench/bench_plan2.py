"""How good are the Plan 2 GANs? On Fashion-MNIST embeddings, train the generators of embeddings
on each encoder's train split and score 10,000 samples against the test split beside a fitted
Gaussian, a 20-component full-covariance Gaussian mixture and the normalizing flows' samples, all
measured in this run with the same metrics and floor; then train the translators between encoder
pairs and score the translated test embeddings. Not a test: it takes hours on 2 CPU cores.

Every generator, flow, fitted baseline and translator is trained (or fitted) once per seed of
SEEDS, each seed's runs in a data folder of their own (DATA_DIR/seed<k>, with copies of the
stage-1 embeddings), and every metric is printed as the mean ± the sample sd over the seeds. The
target is checked on the means, with the number of seeds it is met at; the best GAN of an encoder
is chosen on the held-out Fréchet distance the stage records (training embeddings it held out),
never on the test split.

Encoders missing from --data-dir are trained first, once for all seeds (encoder_models.py
--epochs 2, the stage's quick recipe), and flows.py runs on each encoder unless --flows is empty.

    python bench/bench_plan2.py --encoders ae_basic --models wgan_gp --pairs ae_basic:vae
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import flows  # noqa: E402
from bench_common import (  # noqa: E402
    dataset_files,
    flag_words,
    mean_sd,
    meets_target,
    over_seeds,
    run_script,
    seed_folder,
    share_inputs,
    within_target,
)
from dataio.artifacts import load_embeddings, load_npz  # noqa: E402
from evaluation import scoring  # noqa: E402
from models.flow_models import baseline_samples  # noqa: E402
from models.vector_gans import GENERATORS, is_adversarial  # noqa: E402
from runtime.settings import SettingsError, configure, pick  # noqa: E402
from runtime.stage import limit_cpu_threads, run_stage  # noqa: E402

# The metrics the target reads, averaged over the seeds before it is checked.
TARGET_METRICS = ("ratio", "precision", "recall", "density")

# ---------------------------------------------------------------- settings
DATASET = "fashion-mnist"  # dataset of the embeddings [in dataio.data_sources.DATASETS]
DATA_DIR = "data/bench_plan2"  # where the benchmark's embeddings, checkpoints and samples go
ENCODERS = ("ae_basic", "ae_intermediate", "ae_advanced", "vae")  # embeddings to generate
MODELS = GENERATORS  # generators [in GENERATORS]
PAIRS = ("ae_basic:vae", "ae_advanced:ntxent")  # translations A:B (CycleGAN, DualGAN) [or empty]
ENCODER_EPOCHS = 2  # epochs of encoder_models.py for an encoder that is missing [>= 1]
EPOCHS = 0  # epochs of plan2_gan_training.py (0: the stage's own default) [>= 0]
STAGE_ARGS = ""  # more plan2_gan_training.py flags, e.g. --stage-args="--batch-size 128"
FLOWS = ("realnvp",)  # flows whose samples are tabled [in models.flow_models.FLOW_NAMES, or empty]
FLOW_ARGS = ""  # more flows.py flags
SAMPLES = 10000  # samples of every generator, fitted baseline and flow [>= 10]
SEEDS = (0, 1, 2)  # seeds of every measured configuration [seed]
DEVICE = "auto"  # passed to the stages
THREADS = 1  # CPU threads of the metrics here and of each stage (0: library default) [>= 0]
# ---------------------------------------------------------------- end of settings


@dataclass(frozen=True)
class Plan2Bench:
    """This benchmark's settings, as main passes them down."""

    dataset: str
    data_dir: str
    encoders: tuple[str, ...]
    models: tuple[str, ...]
    pairs: tuple[str, ...]
    encoder_epochs: int
    epochs: int
    stage_args: str
    flows: tuple[str, ...]
    flow_args: str
    samples: int
    seeds: tuple[int, ...]
    device: str
    threads: int
    mixture_components: int  # flows.py's --gmm-components default


def run(script: str, b: Plan2Bench, data_dir: Path, seed: int, *args: str) -> float:
    """Run a stage script as a user would, on one data folder with one seed; returns its wall
    time."""
    return run_script(script, "--dataset", b.dataset, "--data-dir", str(data_dir), "--seed",
                      str(seed), "--device", b.device, *args)


def epochs_args(b: Plan2Bench) -> list[str]:
    """--epochs for the stage, or nothing: its own default."""
    return ["--epochs", str(b.epochs)] if b.epochs else []


def row(name: str, values: dict[str, Any], seconds: float | None,
        validation: float | None = None) -> dict[str, Any]:
    """A table row; seconds: the training (or fitting) time, None where it is not separate;
    validation: the stage's held-out Fréchet distance (training embeddings it held out), for the
    choice."""
    return {"name": name, "seconds": seconds, "validation": validation, **values,
            "ratio": values["frechet_distance"] / values["frechet_distance_floor"]}


def held_out_frechet(meta: dict[str, Any]) -> float | None:
    """The best epoch's held-out Fréchet distance a generator's file records (an ensemble's:
    the mean over its members), or None."""
    value = meta.get("held_out_frechet")
    values = value if isinstance(value, list) else [value]
    return None if not values or None in values else sum(values) / len(values)


def generator_rows(encoder: str, seed: int, b: Plan2Bench) -> list[dict[str, Any]]:
    """Every generator of one encoder's embeddings at one seed (trained in the seed's folder),
    scored by scoring.plan2_metrics."""
    score_settings = scoring.ScoringSettings(seed=seed)
    folder = seed_folder(ROOT / b.data_dir, seed)
    source = ROOT / b.data_dir / "embeddings" / f"{b.dataset}_{encoder}.npz"
    real = load_embeddings(source)
    rows = []
    started = time.time()  # flows.py's baselines, fitted as it fits them
    baselines = baseline_samples(real["z_train"], real["z_test"], b.samples, seed,
                                 b.mixture_components)
    fitted = time.time() - started
    for name, key, seconds in (("Gaussian (fitted)", "Gaussian", None),
                               (f"GMM-{b.mixture_components} full (fitted)", "mixture", fitted)):
        rows.append(row(name, scoring.plan2_metrics(source, {"z_gen": baselines[key]}, real,
                                                    score_settings),
                        seconds))
    for flow in b.flows:
        seconds = run("flows.py", b, folder, seed, "--encoders", encoder, "--flows", flow,
                      "--samples", str(b.samples), "--threads", str(b.threads),
                      *flag_words("--flow-args", b.flow_args))
        generated = load_npz(folder / "embeddings" / f"{b.dataset}_{encoder}+{flow}.gen.npz",
                             {"z_gen": (2, "f")})
        rows.append(row(f"{flow} (flows.py)", scoring.plan2_metrics(source, generated, real,
                                                                    score_settings),
                        seconds))
    run("plan2_gan_training.py", b, folder, seed, "--encoder", encoder, "--models",
        ",".join(b.models), *epochs_args(b), "--samples", str(b.samples), "--threads",
        str(b.threads), *flag_words("--stage-args", b.stage_args))
    for name in b.models:
        generated = load_npz(folder / "embeddings" / f"{b.dataset}_{encoder}_{name}.gen.npz",
                             {"z_gen": (2, "f")})
        rows.append(row(name, scoring.plan2_metrics(source, generated, real, score_settings),
                        generated["meta"].get("train_seconds"),
                        held_out_frechet(generated["meta"])))
    return rows


def by_name(runs: list[list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Each row's name and its values at every seed (``runs``: one list of rows per seed)."""
    table: dict[str, list[dict[str, Any]]] = {}
    for rows in runs:
        for r in rows:
            table.setdefault(r["name"], []).append(r)
    return table


def seeds_cell(records: list[dict[str, Any]], key: str, digits: int = 3) -> str:
    """One table cell: ``key``'s mean ± sd over the seeds' records."""
    return over_seeds([r[key] for r in records], digits)


def means(records: list[dict[str, Any]]) -> dict[str, float]:
    """The metrics the target reads, each the mean over the seeds."""
    return {m: mean_sd([r[m] for r in records])[0] for m in TARGET_METRICS}


def mixture_of(table: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The 20-component mixture's rows, one per seed."""
    return next(records for name, records in table.items() if name.startswith("GMM"))


def target_cell(records: list[dict[str, Any]], mixture: list[dict[str, Any]]) -> str:
    """The target on the means over the seeds, and at how many seeds it is met (each seed's row
    against that seed's mixture)."""
    mean = means(records)
    met = meets_target(mean, means(mixture))
    bounds = "" if met or within_target(mean) else "outside the bounds; "
    at_seeds = sum(meets_target(r, m) for r, m in zip(records, mixture, strict=True))
    return f"{'met' if met else 'not met'} ({bounds}met at {at_seeds} of {len(records)} seeds)"


def generator_table(encoder: str, runs: list[list[dict[str, Any]]]) -> str:
    """One encoder's rows, each metric the mean ± sd over the seeds."""
    table = by_name(runs)
    floor = next(iter(table.values()))
    mixture = mixture_of(table)
    lines = [f"{encoder} (floor: Fréchet distance "
             f"{over_seeds([r['frechet_distance_floor'] for r in floor], 4)}, precision "
             f"{over_seeds([r['precision_floor'] for r in floor])}, recall "
             f"{over_seeds([r['recall_floor'] for r in floor])}, density "
             f"{over_seeds([r['density_floor'] for r in floor])}, coverage "
             f"{over_seeds([r['coverage_floor'] for r in floor])})", "",
             "| generator | Fréchet distance / floor | precision | recall | density | coverage | "
             "k-NN class match | TSTR k-NN (TRTR) | target on the mean (seeds met) | time "
             "(mean; GANs: training; flows: flows.py; mixture: fitting both baselines) |",
             "| --- " * 10 + "|"]
    for name, records in table.items():
        conditional = "knn_class_consistency" in records[0]
        seconds = [r["seconds"] for r in records if r["seconds"] is not None]
        lines.append(f"| {name} | "
                     + " | ".join(seeds_cell(records, key, digits) for key, digits in (
                         ("ratio", 2), ("precision", 3), ("recall", 3), ("density", 3),
                         ("coverage", 3)))
                     + " | "
                     + (f"{seeds_cell(records, 'knn_class_consistency')} | "
                        f"{seeds_cell(records, 'tstr_knn_accuracy')} "
                        f"({seeds_cell(records, 'trtr_knn_accuracy')})" if conditional
                        else "— | —")
                     + f" | {'—' if records is mixture else target_cell(records, mixture)} | "
                     + (f"{mean_sd(seconds)[0]:.0f} s |" if seconds else "— |"))
    return "\n".join(lines)


def verdict(encoder: str, runs: list[list[dict[str, Any]]], models: tuple[str, ...]) -> str:
    """The target: the best GAN, chosen on the held-out Fréchet distance the stage records (on
    training embeddings), at recall >= 0.8 and Fréchet distance <= 2x the floor beats the
    mixture on precision and density, on the means over the seeds."""
    table = by_name(runs)
    mixture = mixture_of(table)
    gans = [name for name in models if is_adversarial(name)]
    if not gans:
        return f"{encoder}: not checked: no GAN among --models {','.join(models)}"
    validation = {name: [r["validation"] for r in table[name]] for name in gans}
    if any(None in values for values in validation.values()):
        return (f"{encoder}: not checked: a GAN's run recorded no held-out Fréchet distance "
                f"(--held-out-fraction 0?), and the test split never chooses")
    best = min(gans, key=lambda name: mean_sd(validation[name])[0])
    records = table[best]
    mean = means(records)
    met = meets_target(mean, means(mixture))
    at_seeds = sum(meets_target(r, m) for r, m in zip(records, mixture, strict=True))
    return (f"{encoder}: {'met' if met else 'NOT met'} on the means (met at {at_seeds} of "
            f"{len(records)} seeds): best GAN {best} (lowest held-out Fréchet distance, "
            f"{mean_sd(validation[best])[0]:.4f} mean) precision "
            f"{seeds_cell(records, 'precision')} (mixture {seeds_cell(mixture, 'precision')}), "
            f"density {seeds_cell(records, 'density')} ({seeds_cell(mixture, 'density')}), "
            f"recall {seeds_cell(records, 'recall')}, Fréchet distance / floor "
            f"{seeds_cell(records, 'ratio', 2)}"
            + ("" if within_target(mean) else "; outside recall >= 0.8 with <= 2x the floor"))


def translation_rows(pair: str, seed: int, b: Plan2Bench) -> list[dict[str, Any]]:
    """CycleGAN and DualGAN from A to B at one seed (trained in the seed's folder), scored on the
    test split."""
    score_settings = scoring.ScoringSettings(seed=seed)
    source_name, _, target_name = pair.partition(":")
    shared = ROOT / b.data_dir / "embeddings"
    source = load_embeddings(shared / f"{b.dataset}_{source_name}.npz")
    target = load_embeddings(shared / f"{b.dataset}_{target_name}.npz")
    folder = seed_folder(ROOT / b.data_dir, seed)
    run("plan2_gan_training.py", b, folder, seed, "--encoder", source_name, "--encoder-b",
        target_name, "--models", "cyclegan,dualgan", *epochs_args(b), "--threads",
        str(b.threads), *flag_words("--stage-args", b.stage_args))
    rows = []
    for name in ("cyclegan", "dualgan"):
        path = folder / "embeddings" / f"{b.dataset}_{source_name}-to-{target_name}_{name}.npz"
        translated = load_npz(path, {"z_translated": (2, "f")})
        values = scoring.translation_metrics(path, translated["z_translated"], source, target,
                                             score_settings)
        rows.append({"name": f"{name} {source_name} -> {target_name}",
                     "seconds": translated["meta"].get("train_seconds"), **values})
    return rows


def translation_table(runs: list[list[dict[str, Any]]]) -> str:
    """The translators' rows, each metric the mean ± sd over the seeds; the 10-point bound on
    the mean gap, and at how many seeds it holds."""
    lines = ["| translation | cosine to the true B (paired linear map) | k-NN acc. of A->B "
             "| B's own k-NN acc. | within 10 points (seeds) | training time (mean) |",
             "| --- " * 6 + "|"]
    for name, records in by_name(runs).items():
        gaps = [r["knn_accuracy_target"] - r["knn_accuracy"] for r in records]
        gap = mean_sd(gaps)[0]
        seconds = [r["seconds"] for r in records if r["seconds"] is not None]
        lines.append(f"| {name} | {seeds_cell(records, 'cosine')} "
                     f"({seeds_cell(records, 'cosine_paired_linear')}) | "
                     f"{seeds_cell(records, 'knn_accuracy')} | "
                     f"{seeds_cell(records, 'knn_accuracy_target')} | "
                     f"{'yes' if gap <= 0.10 else f'no, {gap * 100:.1f} points below'} "
                     f"(within at {sum(g <= 0.10 for g in gaps)} of {len(gaps)} seeds) | "
                     + (f"{mean_sd(seconds)[0]:.0f} s |" if seconds else "— |"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    b = pick(Plan2Bench, configure(globals(), argv),
             mixture_components=configure(vars(flows), [])["gmm_components"])
    flag_words("--flow-args", b.flow_args)  # checked before anything trains
    flag_words("--stage-args", b.stage_args)
    for pair in b.pairs:  # checked before anything trains
        source_name, colon, target_name = pair.partition(":")
        if not (colon and source_name and target_name) or ":" in target_name:
            raise SettingsError(f"--pairs {pair}: expected SOURCE:TARGET, e.g. ae_advanced:vae")
        if source_name == target_name:
            raise SettingsError(f"--pairs {pair}: a translation needs two different encoders")
    limit_cpu_threads(b.threads)
    root = ROOT / b.data_dir
    encoders = sorted(set(b.encoders) | {e for p in b.pairs for e in p.split(":") if e})
    missing = [e for e in encoders
               if not (root / "embeddings" / f"{b.dataset}_{e}.npz").is_file()]
    if missing:  # made once, with the first seed; every seed's runs share them
        run("encoder_models.py", b, root, b.seeds[0], "--models", ",".join(missing),
            "--epochs", str(b.encoder_epochs))
    inputs = [root / "embeddings" / f"{b.dataset}_{e}.npz" for e in encoders]
    for seed in b.seeds:
        share_inputs(root, seed_folder(root, seed), inputs + dataset_files(root, b.dataset))
    seeds = ", ".join(map(str, b.seeds))
    tables, verdicts = [], []
    for encoder in b.encoders:
        runs = [generator_rows(encoder, seed, b) for seed in b.seeds]
        tables.append(generator_table(encoder, runs))
        verdicts.append(verdict(encoder, runs, b.models))
        print(f"\n{tables[-1]}\n{verdicts[-1]}\n", flush=True)
    translations = [[r for pair in b.pairs for r in translation_rows(pair, seed, b)]
                    for seed in b.seeds]
    epochs = b.epochs or "the stage's default"
    print(f"\n# Plan 2 on {b.dataset} embeddings: {b.samples} samples each against the test split; "
          f"GANs: {epochs} epochs{f' ({b.stage_args})' if b.stage_args else ''}; seeds {seeds}: "
          f"every generator, flow, fitted baseline and translator trained once per seed, each "
          f"cell the mean ± the sample sd over the seeds (the floors' subsets seeded too)\n")
    print("\n\n".join(tables))
    print(f"\nTargets (on the means over seeds {seeds}):\n" + "\n".join(f"- {v}"
                                                                        for v in verdicts))
    if b.pairs:
        print("\n" + translation_table(translations))


if __name__ == "__main__":
    run_stage(main, resumable=False)
