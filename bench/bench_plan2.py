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
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import evaluate  # noqa: E402
import flows  # noqa: E402
from artifacts import load_embeddings, load_npz  # noqa: E402
from runtime import StageError, limit_cpu_threads, run_stage  # noqa: E402
from settings import configure  # noqa: E402

DATASET = "fashion-mnist"  # dataset of the embeddings [in data_sources.DATASETS]
DATA_DIR = "data/bench_plan2"  # where the benchmark's embeddings, checkpoints and samples go
ENCODERS = ("ae_basic", "ae_intermediate", "ae_advanced", "vae")  # embeddings to generate
MODELS = ("wgan_gp", "vaegan", "contrastive_gan")  # generators [in plan2_gan_training.GENERATORS]
PAIRS = ("ae_basic:vae", "ae_advanced:ntxent")  # translations A:B (CycleGAN, DualGAN) [or empty]
ENCODER_EPOCHS = 2  # epochs of encoder_models.py for an encoder that is missing [>= 1]
EPOCHS = 0  # epochs of plan2_gan_training.py (0: the stage's own default) [>= 0]
STAGE_ARGS = ""  # more plan2_gan_training.py flags, e.g. --stage-args="--batch-size 128"
FLOWS = ("realnvp",)  # flows whose samples join the table [in flows.FLOW_NAMES, or empty]
FLOW_ARGS = ""  # more flows.py flags
SAMPLES = 10000  # samples of every generator, fitted baseline and flow [>= 10]
SEED = 0  # seeds the stages, the baselines and the metrics [>= 0]
DEVICE = "auto"  # passed to the stages
THREADS = 1  # CPU threads of the metrics here and of each stage (0: library default) [>= 0]


def run(script: str, *args: str) -> float:
    """Run a stage script as a user would; returns its wall time."""
    started = time.time()
    subprocess.run([sys.executable, str(ROOT / script), "--dataset", DATASET, "--data-dir",
                    DATA_DIR, "--seed", str(SEED), "--device", DEVICE, *args], cwd=ROOT,
                   check=True)
    return time.time() - started


def epochs_args() -> list[str]:
    """--epochs for the stage, or nothing: its own default."""
    return ["--epochs", str(EPOCHS)] if EPOCHS else []


def row(name: str, values: dict[str, Any], seconds: float | None) -> dict[str, Any]:
    """A table row; seconds: the training (or fitting) time, None where it is not separate."""
    return {"name": name, "seconds": seconds, **values,
            "ratio": values["frechet_distance"] / values["frechet_distance_floor"]}


def generator_rows(encoder: str) -> list[dict[str, Any]]:
    """Every generator of one encoder's embeddings, scored by evaluate.plan2_metrics."""
    folder = ROOT / DATA_DIR / "embeddings"
    source = folder / f"{DATASET}_{encoder}.npz"
    real = load_embeddings(source)
    rows = []
    started = time.time()  # flows.py's baselines, fitted as it fits them
    baselines = flows.baseline_samples(real["z_train"], real["z_test"], SAMPLES, SEED)
    fitted = time.time() - started
    for name, key, seconds in (("Gaussian (fitted)", "Gaussian", None),
                               (f"GMM-{flows.GMM_COMPONENTS} full (fitted)", "mixture", fitted)):
        rows.append(row(name, evaluate.plan2_metrics(source, {"z_gen": baselines[key]}, real),
                        seconds))
    for flow in FLOWS:
        seconds = run("flows.py", "--encoders", encoder, "--flows", flow, "--samples",
                      str(SAMPLES), "--threads", str(THREADS), *shlex.split(FLOW_ARGS))
        generated = load_npz(folder / f"{DATASET}_{encoder}+{flow}.gen.npz", {"z_gen": (2, "f")})
        rows.append(row(f"{flow} (flows.py)", evaluate.plan2_metrics(source, generated, real),
                        seconds))
    run("plan2_gan_training.py", "--encoder", encoder, "--models", ",".join(MODELS),
        *epochs_args(), "--samples", str(SAMPLES), "--threads", str(THREADS),
        *shlex.split(STAGE_ARGS))
    for name in MODELS:
        generated = load_npz(folder / f"{DATASET}_{encoder}_{name}.gen.npz", {"z_gen": (2, "f")})
        rows.append(row(name, evaluate.plan2_metrics(source, generated, real),
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


def within_target(row: dict[str, Any]) -> bool:
    """Issue 10's bounds on one generator's row: recall >= 0.8, Fréchet distance <= 2x the
    floor (``ratio``)."""
    return row["recall"] >= 0.8 and row["ratio"] <= 2.0


def meets_target(row: dict[str, Any], mixture: dict[str, Any]) -> bool:
    """Issue 10's target on one row: within its bounds, and above the 20-component mixture's
    precision and density."""
    return within_target(row) and row["precision"] > mixture["precision"] \
        and row["density"] > mixture["density"]


def verdict(encoder: str, rows: list[dict[str, Any]]) -> str:
    """The target: the best GAN with recall >= 0.8 and Fréchet distance <= 2x the floor beats
    the mixture on precision and density."""
    mixture = next(r for r in rows if r["name"].startswith("GMM"))
    gans = [r for r in rows if r["name"] in MODELS]
    eligible = [r for r in gans if within_target(r)]
    best = max(eligible or gans, key=lambda r: (r["precision"], r["density"]))
    met = bool(eligible) and meets_target(best, mixture)
    return (f"{encoder}: {'met' if met else 'NOT met'}: best GAN {best['name']} precision "
            f"{best['precision']:.3f} (mixture {mixture['precision']:.3f}), density "
            f"{best['density']:.3f} ({mixture['density']:.3f}), recall {best['recall']:.3f}, "
            f"Fréchet distance {best['ratio']:.2f}x the floor"
            + ("" if eligible else "; no GAN reached recall >= 0.8 with <= 2x the floor"))


def translation_rows(pair: str) -> list[dict[str, Any]]:
    source_name, _, target_name = pair.partition(":")
    if not target_name:
        raise StageError(f"--pairs {pair}: expected SOURCE:TARGET, e.g. ae_advanced:vae")
    folder = ROOT / DATA_DIR / "embeddings"
    source = load_embeddings(folder / f"{DATASET}_{source_name}.npz")
    target = load_embeddings(folder / f"{DATASET}_{target_name}.npz")
    run("plan2_gan_training.py", "--encoder", source_name, "--encoder-b", target_name,
        "--models", "cyclegan,dualgan", *epochs_args(), "--threads", str(THREADS),
        *shlex.split(STAGE_ARGS))
    rows = []
    for name in ("cyclegan", "dualgan"):
        path = folder / f"{DATASET}_{source_name}-to-{target_name}_{name}.npz"
        translated = load_npz(path, {"z_translated": (2, "f")})
        values = evaluate.translation_metrics(path, translated["z_translated"], source, target)
        rows.append({"name": f"{name} {source_name} -> {target_name}",
                     "seconds": translated["meta"].get("train_seconds"), **values})
    return rows


def main() -> None:
    configure(globals())
    limit_cpu_threads(THREADS)
    evaluate.SEED = SEED
    encoders = sorted(set(ENCODERS) | {e for p in PAIRS for e in p.split(":") if e})
    missing = [e for e in encoders
               if not (ROOT / DATA_DIR / "embeddings" / f"{DATASET}_{e}.npz").is_file()]
    if missing:
        run("encoder_models.py", "--models", ",".join(missing), "--epochs", str(ENCODER_EPOCHS))
    tables, verdicts = [], []
    for encoder in ENCODERS:
        rows = generator_rows(encoder)
        tables.append(generator_table(encoder, rows))
        verdicts.append(verdict(encoder, rows))
        print(f"\n{tables[-1]}\n{verdicts[-1]}\n", flush=True)
    translations = [r for pair in PAIRS for r in translation_rows(pair)]
    epochs = EPOCHS or "the stage's default"
    print(f"\n# Plan 2 on {DATASET} embeddings: {SAMPLES} samples each against the test split; "
          f"GANs: {epochs} epochs{f' ({STAGE_ARGS})' if STAGE_ARGS else ''}, seed {SEED}\n")
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
