"""How good are the Plan 2 GANs? On Fashion-MNIST embeddings, train the generators of embeddings
on each encoder's train split and score 10,000 samples against the test split beside a fitted
Gaussian, a 20-component full-covariance Gaussian mixture and the normalizing flows' samples, all
measured in this run with the same metrics and floor; then train the translators between encoder
pairs and score the translated test embeddings. Not a test: it takes hours on 2 CPU cores.

Encoders missing from --data-dir are trained first (encoder_models.py --epochs 2, the stage's
quick recipe), and flows.py runs on each encoder unless --flows is empty.

    python bench/bench_plan2.py --encoders ae_basic --models wgan_gp --pairs ae_basic:vae
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import flows  # noqa: E402
import scoring  # noqa: E402
from artifacts import load_embeddings, load_npz  # noqa: E402
from bench_common import meets_target, run_script, within_target  # noqa: E402
from flow_models import baseline_samples  # noqa: E402
from runtime import limit_cpu_threads, run_stage  # noqa: E402
from settings import SettingsError, configure, pick  # noqa: E402
from vector_gans import GENERATORS  # noqa: E402

DATASET = "fashion-mnist"  # dataset of the embeddings [in data_sources.DATASETS]
DATA_DIR = "data/bench_plan2"  # where the benchmark's embeddings, checkpoints and samples go
ENCODERS = ("ae_basic", "ae_intermediate", "ae_advanced", "vae")  # embeddings to generate
MODELS = GENERATORS  # generators [in GENERATORS]
PAIRS = ("ae_basic:vae", "ae_advanced:ntxent")  # translations A:B (CycleGAN, DualGAN) [or empty]
ENCODER_EPOCHS = 2  # epochs of encoder_models.py for an encoder that is missing [>= 1]
EPOCHS = 0  # epochs of plan2_gan_training.py (0: the stage's own default) [>= 0]
STAGE_ARGS = ""  # more plan2_gan_training.py flags, e.g. --stage-args="--batch-size 128"
FLOWS = ("realnvp",)  # flows whose samples join the table [in flow_models.FLOW_NAMES, or empty]
FLOW_ARGS = ""  # more flows.py flags
SAMPLES = 10000  # samples of every generator, fitted baseline and flow [>= 10]
SEED = 0  # seeds the stages, the baselines and the metrics [>= 0]
DEVICE = "auto"  # passed to the stages
THREADS = 1  # CPU threads of the metrics here and of each stage (0: library default) [>= 0]


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
    seed: int
    device: str
    threads: int
    mixture_components: int  # flows.py's --gmm-components default


def run(script: str, b: Plan2Bench, *args: str) -> float:
    """Run a stage script as a user would, on this benchmark's data; returns its wall time."""
    return run_script(script, "--dataset", b.dataset, "--data-dir", b.data_dir, "--seed",
                      str(b.seed), "--device", b.device, *args)


def epochs_args(b: Plan2Bench) -> list[str]:
    """--epochs for the stage, or nothing: its own default."""
    return ["--epochs", str(b.epochs)] if b.epochs else []


def row(name: str, values: dict[str, Any], seconds: float | None) -> dict[str, Any]:
    """A table row; seconds: the training (or fitting) time, None where it is not separate."""
    return {"name": name, "seconds": seconds, **values,
            "ratio": values["frechet_distance"] / values["frechet_distance_floor"]}


def generator_rows(encoder: str, b: Plan2Bench) -> list[dict[str, Any]]:
    """Every generator of one encoder's embeddings, scored by scoring.plan2_metrics."""
    score_settings = scoring.ScoringSettings(seed=b.seed)
    folder = ROOT / b.data_dir / "embeddings"
    source = folder / f"{b.dataset}_{encoder}.npz"
    real = load_embeddings(source)
    rows = []
    started = time.time()  # flows.py's baselines, fitted as it fits them
    baselines = baseline_samples(real["z_train"], real["z_test"], b.samples, b.seed,
                                 b.mixture_components)
    fitted = time.time() - started
    for name, key, seconds in (("Gaussian (fitted)", "Gaussian", None),
                               (f"GMM-{b.mixture_components} full (fitted)", "mixture", fitted)):
        rows.append(row(name, scoring.plan2_metrics(source, {"z_gen": baselines[key]}, real,
                                              score_settings),
                        seconds))
    for flow in b.flows:
        seconds = run("flows.py", b, "--encoders", encoder, "--flows", flow, "--samples",
                      str(b.samples), "--threads", str(b.threads), *shlex.split(b.flow_args))
        generated = load_npz(folder / f"{b.dataset}_{encoder}+{flow}.gen.npz", {"z_gen": (2, "f")})
        rows.append(row(f"{flow} (flows.py)", scoring.plan2_metrics(source, generated, real,
                                              score_settings),
                        seconds))
    run("plan2_gan_training.py", b, "--encoder", encoder, "--models", ",".join(b.models),
        *epochs_args(b), "--samples", str(b.samples), "--threads", str(b.threads),
        *shlex.split(b.stage_args))
    for name in b.models:
        generated = load_npz(folder / f"{b.dataset}_{encoder}_{name}.gen.npz", {"z_gen": (2, "f")})
        rows.append(row(name, scoring.plan2_metrics(source, generated, real,
                                              score_settings),
                        generated["meta"].get("train_seconds")))
    return rows


def generator_table(encoder: str, rows: list[dict[str, Any]]) -> str:
    floor = rows[0]
    lines = [f"{encoder} (floor: Fréchet distance {floor['frechet_distance_floor']:.4f}, "
             f"precision {floor['precision_floor']:.3f}, recall {floor['recall_floor']:.3f}, "
             f"density {floor['density_floor']:.3f}, coverage {floor['coverage_floor']:.3f})", "",
             "| generator | Fréchet distance / floor | precision | recall | density | coverage | "
             "k-NN class match | TSTR k-NN (TRTR) | time (GANs: training; flows: flows.py; "
             "mixture: fitting both baselines) |", "| --- " * 9 + "|"]
    for r in rows:
        conditional = "knn_class_consistency" in r
        lines.append(f"| {r['name']} | {r['ratio']:.2f} | {r['precision']:.3f} | "
                     f"{r['recall']:.3f} | {r['density']:.3f} | {r['coverage']:.3f} | "
                     + (f"{r['knn_class_consistency']:.3f} | {r['tstr_knn_accuracy']:.3f} "
                        f"({r['trtr_knn_accuracy']:.3f})" if conditional else "— | —")
                     + (" | — |" if r["seconds"] is None else f" | {r['seconds']:.0f} s |"))
    return "\n".join(lines)


def verdict(encoder: str, rows: list[dict[str, Any]], models: tuple[str, ...]) -> str:
    """The target: the best GAN with recall >= 0.8 and Fréchet distance <= 2x the floor beats
    the mixture on precision and density."""
    mixture = next(r for r in rows if r["name"].startswith("GMM"))
    gans = [r for r in rows if r["name"] in models]
    eligible = [r for r in gans if within_target(r)]
    best = max(eligible or gans, key=lambda r: (r["precision"], r["density"]))
    met = bool(eligible) and meets_target(best, mixture)
    return (f"{encoder}: {'met' if met else 'NOT met'}: best GAN {best['name']} precision "
            f"{best['precision']:.3f} (mixture {mixture['precision']:.3f}), density "
            f"{best['density']:.3f} ({mixture['density']:.3f}), recall {best['recall']:.3f}, "
            f"Fréchet distance {best['ratio']:.2f}x the floor"
            + ("" if eligible else "; no GAN reached recall >= 0.8 with <= 2x the floor"))


def translation_rows(pair: str, b: Plan2Bench) -> list[dict[str, Any]]:
    score_settings = scoring.ScoringSettings(seed=b.seed)
    source_name, _, target_name = pair.partition(":")
    folder = ROOT / b.data_dir / "embeddings"
    source = load_embeddings(folder / f"{b.dataset}_{source_name}.npz")
    target = load_embeddings(folder / f"{b.dataset}_{target_name}.npz")
    run("plan2_gan_training.py", b, "--encoder", source_name, "--encoder-b", target_name,
        "--models", "cyclegan,dualgan", *epochs_args(b), "--threads", str(b.threads),
        *shlex.split(b.stage_args))
    rows = []
    for name in ("cyclegan", "dualgan"):
        path = folder / f"{b.dataset}_{source_name}-to-{target_name}_{name}.npz"
        translated = load_npz(path, {"z_translated": (2, "f")})
        values = scoring.translation_metrics(path, translated["z_translated"], source, target,
                                             score_settings)
        rows.append({"name": f"{name} {source_name} -> {target_name}",
                     "seconds": translated["meta"].get("train_seconds"), **values})
    return rows


def main(argv: list[str] | None = None) -> None:
    b = pick(Plan2Bench, configure(globals(), argv),
             mixture_components=configure(vars(flows), [])["gmm_components"])
    for pair in b.pairs:  # checked before anything trains
        source_name, colon, target_name = pair.partition(":")
        if not (colon and source_name and target_name) or ":" in target_name:
            raise SettingsError(f"--pairs {pair}: expected SOURCE:TARGET, e.g. ae_advanced:vae")
        if source_name == target_name:
            raise SettingsError(f"--pairs {pair}: a translation needs two different encoders")
    limit_cpu_threads(b.threads)
    encoders = sorted(set(b.encoders) | {e for p in b.pairs for e in p.split(":") if e})
    missing = [e for e in encoders
               if not (ROOT / b.data_dir / "embeddings" / f"{b.dataset}_{e}.npz").is_file()]
    if missing:
        run("encoder_models.py", b, "--models", ",".join(missing), "--epochs",
            str(b.encoder_epochs))
    tables, verdicts = [], []
    for encoder in b.encoders:
        rows = generator_rows(encoder, b)
        tables.append(generator_table(encoder, rows))
        verdicts.append(verdict(encoder, rows, b.models))
        print(f"\n{tables[-1]}\n{verdicts[-1]}\n", flush=True)
    translations = [r for pair in b.pairs for r in translation_rows(pair, b)]
    epochs = b.epochs or "the stage's default"
    print(f"\n# Plan 2 on {b.dataset} embeddings: {b.samples} samples each against the test split; "
          f"GANs: {epochs} epochs{f' ({b.stage_args})' if b.stage_args else ''}, seed {b.seed}\n")
    print("\n\n".join(tables))
    print("\nTargets:\n" + "\n".join(f"- {v}" for v in verdicts))
    if translations:
        print("\n| translation | cosine to the true B (paired linear map) | k-NN acc. of A->B "
              "| B's own k-NN acc. | within 10 points | training time |\n" + "| --- " * 6 + "|")
        for r in translations:
            gap = r["knn_accuracy_target"] - r["knn_accuracy"]
            print(f"| {r['name']} | {r['cosine']:.3f} ({r['cosine_paired_linear']:.3f}) | "
                  f"{r['knn_accuracy']:.3f} | {r['knn_accuracy_target']:.3f} | "
                  f"{'yes' if gap <= 0.10 else f'no ({gap * 100:.1f} points below)'} | "
                  f"{r['seconds']:.0f} s |")


if __name__ == "__main__":
    run_stage(main, resumable=False)
