"""Train a small CLIP on a dataset's images and captions of their classes; save it like any CLIP.

A real ``transformers.CLIPModel`` (a ViT image tower for the data's square images, 28x28 grey
for the built-in sets, and a text transformer, both small) learns from pairs (image, caption), the
caption being a template applied to the image's class ("a photo of a Sneaker", "a black and white
photo of the digit 3", ...), with CLIP's symmetric image-text contrastive loss
(CL_loss_function.clip_contrastive_loss). The model, a BPE CLIP tokenizer trained on the captions
and a CLIP image processor whose mean and standard deviation are those of the training pixels (per
RGB channel; a grey image is its channel three times) are saved with ``save_pretrained`` into
data/checkpoints/clip_<ds>/, which extract_generation_embeddings.py loads like
openai/clip-vit-base-patch32 (``--model data/checkpoints/clip_<ds>``). Reported: zero-shot accuracy
on the test split (each image against the captions of every class, templates averaged), also per
template; written to data/results/clip_<ds>_zero_shot.json and a confusion-matrix PNG.
Training writes a checkpoint after every epoch (data/checkpoints/clip/<ds>.pt) and resumes from it.

    python train_small_clip.py --dataset digits --epochs 2 --limit 1000
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from tqdm import tqdm

from CL_loss_function import clip_contrastive_loss
from clip_tools.captions import CAPTION_TEMPLATES, class_captions
from dataio.artifacts import (
    check_replaceable,
    check_settings_match,
    ensure_output_dir,
    give_umask_permissions,
    hold_output_lock,
    holds_output_locks,
    load_checkpoint,
    make_meta,
    replace_directory,
    save_checkpoint,
    save_figure,
    short_cause,
    staging_dir,
    tagged,
    write_text,
)
from dataio.data_sources import load_dataset, resolve_dataset
from dataio.image_layout import GREY_28
from runtime.settings import SettingsError, configure, pick
from runtime.stage import (
    StageError,
    limit_cpu_threads,
    pick_device,
    require_finite,
    run_stage,
    seed_everything,
)
from runtime.tracking import open_run_log

# Tables the stage and its settings' rules use (not settings).
# CLIP's context length: what extract_generation_embeddings.py truncates captions to.
MAX_TEXT_LENGTH = 77

# ---------------------------------------------------------------- settings
DATASET = "fashion-mnist"  # dataset to train on [in dataio.data_sources.DATASETS, or folder:PATH]
IMAGE_SIZE = 0  # folder:PATH: resize its images to NxN (0: their own size, when shared) [>= 0]
DATA_DIR = "data"  # where the model, checkpoints and results are written
OUTPUT_DIR = ""  # where save_pretrained writes the model ('': DATA_DIR/checkpoints/clip_<ds>)
EPOCHS = 2  # passes over the training images (one-cycle schedule over all of them) [>= 1]
BATCH_SIZE = 64  # image-caption pairs per step (small batches learn faster per epoch) [>= 2]
LEARNING_RATE = 3e-3  # peak AdamW learning rate of the one-cycle schedule [> 0]
WEIGHT_DECAY = 0.05  # AdamW weight decay of the weight matrices [>= 0]
LIMIT = 0  # train on the first N training images only (0: all) [>= 0]
SEED = 0  # seeds weights, batch order and template choice [seed]
TAG = ""  # a variant's name: outputs clip_<ds>@TAG beside the untagged run's ("": none) [tag]
TENSORBOARD = True  # log losses and zero-shot accuracy to <data-dir>/runs/clip/<run>/
WANDB = ""  # also mirror the log to this Weights & Biases project (needs wandb; "": off)
DEVICE = "auto"  # auto (cuda, then mps, then cpu), cuda, mps or cpu
DETERMINISTIC = True  # deterministic CUDA kernels, for repeatable runs and resumes
THREADS = 1  # CPU threads of torch, BLAS and OpenMP (0: library default) [>= 0]
HIDDEN_SIZE = 64  # width of both transformer towers [>= 8, <= 4096]
VISION_LAYERS = 4  # transformer layers of the image tower [>= 1]
TEXT_LAYERS = 2  # transformer layers of the text tower [>= 1]
HEADS = 4  # attention heads per layer (must divide --hidden-size) [>= 1]
PATCH_SIZE = 0  # ViT patch size dividing the image side (0: a quarter, 7 for 28x28) [>= 0]
PROJECTION_DIM = 64  # size of the joint image-text embedding [>= 2]
VOCAB_SIZE = 400  # BPE vocabulary size: 326 bytes and symbols, then merges from captions [>= 330]
EVAL_BATCH_SIZE = 1000  # images per forward pass when evaluating [>= 1]
# ---------------------------------------------------------------- end of settings


@dataclass(frozen=True)
class ClipSettings:
    """The small CLIP's towers, its training and where it is written."""

    dataset: str
    data_dir: str
    output_dir: str
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    limit: int
    seed: int
    deterministic: bool
    tag: str
    hidden_size: int
    vision_layers: int
    text_layers: int
    heads: int
    patch_size: int
    projection_dim: int
    vocab_size: int
    eval_batch_size: int


# ---------------------------------------------------------------- captions
def build_tokenizer(captions: list[str], vocab_size: int) -> Any:
    """A CLIP tokenizer whose BPE merges are learned from ``captions`` (with CLIP's own
    normalisation and pre-tokenisation); every printable ASCII character stays in the vocabulary
    (inside a word and at its end), so that no other text maps to the unknown token.

    The trainer's merges are deterministic, its token ids are not (they follow a hash order):
    ids are reassigned as the special tokens, the other base tokens sorted, then the merged
    tokens in merge order, so that a seed makes the same tokenizer in every process."""
    from transformers import CLIPTokenizer

    symbols = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    specials = ["<|startoftext|>", "<|endoftext|>"]
    tokens = [*specials, *symbols, *(s + "</w>" for s in symbols)]
    characters = CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[])
    # Each symbol as a word of its own and doubled: its word-final and word-inner forms.
    alphabet = [" ".join(symbols), " ".join(s + s for s in symbols)]
    trained = characters.train_new_from_iterator(alphabet + captions, vocab_size=vocab_size)
    model = json.loads(trained.backend_tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    merged = list(dict.fromkeys(a + b for a, b in merges))
    base = sorted(set(model["vocab"]) - set(specials) - set(merged))
    vocab = {token: i for i, token in enumerate(specials + base + merged)}
    return CLIPTokenizer(vocab=vocab, merges=merges)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash of the tokenizer's vocabulary (token -> id) and merges, in a fixed order."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    canonical = json.dumps([sorted(model["vocab"].items()), model["merges"]])
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- model and inputs
def patch_size_for(side: int, patch_size: int) -> int:
    """The ViT patch size for square images of ``side`` pixels: ``patch_size`` when it divides
    the side, a quarter of the side (16 patches) when it is 0."""
    divisors = [d for d in range(1, side + 1) if side % d == 0]
    if patch_size == 0:
        return max(d for d in divisors if d <= max(side // 4, 1))
    if side % patch_size:
        raise SettingsError(f"--patch-size {patch_size}: must be one of "
                            f"{', '.join(map(str, divisors))} (the divisors of the image side "
                            f"{side})")
    return patch_size


def image_side(shape: tuple[int, int, int], dataset: str) -> int:
    """The side of the data's images, which the ViT needs square."""
    _, height, width = shape
    if height != width:
        raise StageError(f"--dataset {dataset}: images are {height}x{width}; the small CLIP's "
                         f"ViT takes square images (give --image-size N to resize a folder)")
    return height


def build_clip(vocab_size: int, bos_id: int, eos_id: int, s: ClipSettings, side: int) -> Any:
    """A CLIPModel with small towers for square RGB images of ``side`` pixels (pad token = end
    token, as in OpenAI's CLIP: the text embedding is read at the first end token)."""
    from transformers import CLIPConfig, CLIPModel

    tower = {"hidden_size": s.hidden_size, "intermediate_size": 2 * s.hidden_size,
             "num_attention_heads": s.heads}
    config = CLIPConfig(
        text_config={**tower, "num_hidden_layers": s.text_layers, "vocab_size": vocab_size,
                     "max_position_embeddings": MAX_TEXT_LENGTH, "bos_token_id": bos_id,
                     "eos_token_id": eos_id, "pad_token_id": eos_id},
        vision_config={**tower, "num_hidden_layers": s.vision_layers, "image_size": side,
                       "patch_size": s.patch_size, "num_channels": 3},
        projection_dim=s.projection_dim)
    return CLIPModel(config)


def build_image_processor(mean: list[float], std: list[float], side: int) -> Any:
    """CLIP's image processor for square images of ``side`` pixels: RGB, resize and centre-crop to
    the side (identity on the data's images), rescale to [0, 1], normalise with the training
    pixels' per-channel mean and std."""
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # "torchvision not installed": PIL is used
    try:
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor(do_resize=True, size={"shortest_edge": side},
                                  do_center_crop=True,
                                  crop_size={"height": side, "width": side},
                                  do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                                  image_mean=list(mean), image_std=list(std),
                                  do_convert_rgb=True)
    finally:
        transformers_logging.set_verbosity(verbosity)


def pixel_statistics(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-RGB-channel mean and std of uint8 images in [0, 1] units; a grey set gives its one
    channel's statistics three times (what the processor's grey-to-RGB conversion makes)."""
    if images.ndim == 3:
        mean, std = float(images.mean() / 255.0), float(images.std() / 255.0)
        return [mean] * 3, [std] * 3
    pixels = images.reshape(-1, images.shape[-1])
    return ([float(v / 255.0) for v in pixels.mean(axis=0)],
            [float(v / 255.0) for v in pixels.std(axis=0)])


def pixel_values(images: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 (B, H, W) grey or (B, H, W, 3) colour -> (B, 3, H, W) float, as the image processor
    makes them: grey repeated to three channels, x / 255 normalised per channel."""
    x = images.float() / 255.0
    x = x.unsqueeze(1).expand(-1, 3, -1, -1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


def features(output: Any) -> torch.Tensor:
    """The projected features: a tensor in transformers 4.x, ``.pooler_output`` in 5.x."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def text_features(model: Any, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
    return features(model.get_text_features(**tokens))


def image_features(model: Any, images: torch.Tensor, mean: list[float], std: list[float]
                   ) -> torch.Tensor:
    return features(model.get_image_features(pixel_values=pixel_values(images, mean, std)))


# ---------------------------------------------------------------- training
def contrastive_step_loss(model: Any, images: torch.Tensor, caption_rows: torch.Tensor,
                          tokens: dict[str, torch.Tensor], mean: list[float],
                          std: list[float]) -> torch.Tensor:
    """CLIP's loss on a batch of pairs (image i, caption caption_rows[i] of the caption table).

    The text tower runs once on the table's distinct captions and each pair takes its row: with
    no dropout this is the same function, and the same gradient, as one text pass per pair."""
    texts = text_features(model, tokens)[caption_rows]
    scale = model.logit_scale.exp().clamp(max=100.0)  # CLIP caps the inverse temperature at 100
    return clip_contrastive_loss(image_features(model, images, mean, std), texts, scale)


@torch.no_grad()
def zero_shot(model: Any, images: torch.Tensor, labels: np.ndarray, tokens: dict[str, torch.Tensor],
              num_classes: int, mean: list[float], std: list[float], batch_size: int = 1000
              ) -> dict[str, Any]:
    """Zero-shot classification: each image gets the class whose caption embedding is closest in
    cosine; 'ensemble' averages the unit caption embeddings of the templates of a class (CLIP's
    prompt ensembling), 'per_template' uses one template at a time."""
    model.eval()
    texts = F.normalize(text_features(model, tokens).float(), dim=1)
    texts = texts.view(num_classes, len(CAPTION_TEMPLATES), -1)
    ensemble = F.normalize(texts.mean(dim=1), dim=1)
    chunks = [F.normalize(image_features(model, chunk, mean, std).float(), dim=1)
              for chunk in images.split(batch_size)]
    embedded = torch.cat(chunks)
    predicted = (embedded @ ensemble.T).argmax(dim=1).cpu().numpy()
    per_template = {}
    for t, template in enumerate(CAPTION_TEMPLATES):
        guess = (embedded @ texts[:, t].T).argmax(dim=1).cpu().numpy()
        per_template[template] = float(np.mean(guess == labels))
    return {"accuracy": float(np.mean(predicted == labels)), "per_template": per_template,
            "predicted": predicted}


def resume_settings(n_train: int, tokenizer_hash: str, s: ClipSettings,
                    image_shape: tuple[int, int, int]) -> dict[str, Any]:
    """What a checkpoint must share with this run to be continued (the image shape only when
    it is not 28x28 grey, which checkpoints written before shapes were data hold)."""
    shape = {} if tuple(image_shape) == GREY_28 else {"image_shape": list(image_shape)}
    return {"dataset": s.dataset, **shape, "train_images": n_train, "epochs": s.epochs,
            "batch_size": s.batch_size, "learning_rate": s.learning_rate,
            "weight_decay": s.weight_decay, "seed": s.seed, "hidden_size": s.hidden_size,
            "vision_layers": s.vision_layers, "text_layers": s.text_layers, "heads": s.heads,
            "patch_size": s.patch_size, "projection_dim": s.projection_dim,
            "vocab_size": s.vocab_size, "tokenizer": tokenizer_hash}


def make_optimizer(model: Any, steps: int, s: ClipSettings
                   ) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW with weight decay on weight matrices only (not on biases, norms, the logit scale),
    and a one-cycle schedule (10% warm-up, cosine decay) over ``steps`` steps."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    other = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay},
                                   {"params": other, "weight_decay": 0.0}], lr=s.learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, s.learning_rate, total_steps=steps,
                                                   pct_start=0.1)
    return optimizer, schedule


def confusion_figure(labels: np.ndarray, predicted: np.ndarray, class_names: list[str],
                     title: str) -> Any:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    figure, axes = plt.subplots(figsize=(7.5, 6.5))
    ConfusionMatrixDisplay.from_predictions(labels, predicted, labels=range(len(class_names)),
                                            display_labels=class_names, normalize="true",
                                            values_format=".2f", ax=axes, colorbar=False,
                                            xticks_rotation=45)
    axes.set_title(title, fontsize=10)
    axes.set_xlabel("zero-shot class (closest caption)")
    axes.set_ylabel("true class")
    figure.tight_layout()
    return figure


@holds_output_locks
def main(argv: list[str] | None = None) -> None:
    values = resolve_dataset(configure(globals(), argv))
    s = pick(ClipSettings, values)
    if s.hidden_size % s.heads:
        raise SettingsError(f"--heads {s.heads} does not divide --hidden-size {s.hidden_size}")
    root = Path(s.data_dir)
    stem = tagged(s.dataset, s.tag)
    hold_output_lock(root / f".lock-train_small_clip-{stem}", f"train_small_clip.py, {stem}")
    folders = {name: ensure_output_dir(root / name) for name in
               ("checkpoints/clip", "results", "visualizations")}
    output_dir = Path(s.output_dir) if s.output_dir else root / "checkpoints" / f"clip_{stem}"
    # The folder is named as given (a link there is refused, never followed and replaced); its
    # parent is resolved, since '.' has no name to stage beside.
    output_dir = output_dir.resolve() if not output_dir.name else \
        output_dir.parent.resolve() / output_dir.name
    check_replaceable(output_dir)  # before any training
    ensure_output_dir(output_dir.parent)
    limit_cpu_threads(values["threads"])
    seed_everything(s.seed, s.deterministic)
    device = pick_device(values["device"])
    data = load_dataset(s.dataset, s.data_dir, s.limit)
    n_train = len(data.x_train)
    if n_train < s.batch_size:
        raise StageError(f"--limit {s.limit} leaves {n_train} training images, not one full "
                         f"batch of --batch-size {s.batch_size}")

    side = image_side(data.shape, s.dataset)
    s = replace(s, patch_size=patch_size_for(side, s.patch_size))
    table = class_captions(s.dataset, data.class_names)
    captions = [caption for row in table for caption in row]  # row c * T + t
    tokenizer = build_tokenizer(captions, s.vocab_size)
    tokens = {k: v.to(device) for k, v in tokenizer(captions, padding=True,
                                                    return_tensors="pt").items()}
    mean, std = pixel_statistics(data.x_train)
    print(f"{data.name}: {n_train} train, {len(data.x_test)} test images from {data.source}; "
          f"{len(captions)} captions ({len(CAPTION_TEMPLATES)} templates), vocabulary "
          f"{len(tokenizer)}; {side}x{side} {'RGB' if data.shape[0] == 3 else 'grey'} images in "
          f"{(side // s.patch_size) ** 2} patches of {s.patch_size}; device {device}")

    seed_everything(s.seed, s.deterministic)
    model = build_clip(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                       s, side).to(device)
    steps_per_epoch = n_train // s.batch_size
    optimizer, schedule = make_optimizer(model, s.epochs * steps_per_epoch, s)
    resume = resume_settings(n_train, tokenizer_fingerprint(tokenizer), s, data.shape)
    checkpoint = folders["checkpoints/clip"] / f"{stem}.pt"
    done, losses = 0, []
    if checkpoint.exists():
        state = load_checkpoint(checkpoint, map_location=device,
                                required=("model", "optimizer", "schedule", "epoch", "losses",
                                          "settings"))
        check_settings_match(checkpoint, state["settings"], resume)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise StageError(f"{checkpoint} holds weights of another architecture; delete it to "
                             f"start again ({str(err).splitlines()[0]})") from err
        done, losses = int(state["epoch"]), [float(v) for v in state["losses"]]
        print(f"resuming from {checkpoint} after epoch {done}"
              + ("" if done < s.epochs else "; training is finished"))

    x_train = torch.from_numpy(data.x_train).to(device)
    y_train = torch.from_numpy(data.y_train).to(device)
    x_test = torch.from_numpy(data.x_test).to(device)
    templates = len(CAPTION_TEMPLATES)
    started = time.time()
    log = open_run_log(values, "clip", stem)
    for epoch in range(done + 1, s.epochs + 1):
        model.train()
        generator = torch.Generator().manual_seed(s.seed * 1_000_003 + epoch)
        order = torch.randperm(n_train, generator=generator)[:steps_per_epoch * s.batch_size]
        template_of = torch.randint(templates, (n_train,), generator=generator)
        order, template_of = order.to(device), template_of.to(device)
        total = torch.zeros((), device=device)
        bar = tqdm(order.view(steps_per_epoch, s.batch_size), desc=f"CLIP epoch {epoch}/{s.epochs}",
                   leave=False, disable=None)
        for step, batch in enumerate(bar):
            rows = y_train[batch] * templates + template_of[batch]
            loss = contrastive_step_loss(model, x_train[batch], rows, tokens, mean, std)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.detach()
            if (step + 1) % 50 == 0:  # the one host sync of 50 steps
                running = float(total) / (step + 1)
                bar.set_postfix(loss=f"{running:.4f}")
                log.scalars({"epoch_mean_loss": running}, (epoch - 1) * steps_per_epoch + step + 1,
                            "steps/")
        mean_loss = float(total) / steps_per_epoch
        if not np.isfinite(mean_loss):
            raise StageError(f"CLIP: loss became {mean_loss} in epoch {epoch}; stopped, and the "
                             f"last good checkpoint is kept (try a lower --learning-rate)")
        for name, value in model.state_dict().items():
            require_finite(value, f"CLIP: {name} after epoch {epoch} (training diverged; the "
                                  f"last good checkpoint is kept)")
        losses.append(mean_loss)
        save_checkpoint(checkpoint, {"model": model.state_dict(),
                                     "optimizer": optimizer.state_dict(),
                                     "schedule": schedule.state_dict(), "epoch": epoch,
                                     "losses": losses, "settings": resume})
        accuracy = zero_shot(model, x_test, data.y_test, tokens, data.num_classes, mean,
                             std, s.eval_batch_size)["accuracy"]
        # The test accuracy is watched, never used to choose: the run keeps its last epoch.
        log.scalars({"loss": mean_loss, "zero_shot_test_accuracy": accuracy,
                     "logit_scale": model.logit_scale.exp().item()}, epoch, "epochs/")
        print(f"CLIP: epoch {epoch}/{s.epochs} loss {mean_loss:.4f}, zero-shot test accuracy "
              f"{accuracy:.4f}, logit scale {model.logit_scale.exp().item():.1f} "
              f"({time.time() - started:.0f} s)", flush=True)

    result = zero_shot(model, x_test, data.y_test, tokens, data.num_classes, mean, std,
                       s.eval_batch_size)
    predicted = result.pop("predicted")
    per_class = {name: float(np.mean(predicted[data.y_test == c] == c))
                 for c, name in enumerate(data.class_names) if np.any(data.y_test == c)}
    meta = make_meta(__file__, values, s.dataset, s.seed, epochs_trained=len(losses),
                     losses=losses, train_images=n_train, test_images=len(data.x_test),
                     data_source=data.source, pixel_mean=mean, pixel_std=std,
                     templates=list(CAPTION_TEMPLATES), captions=table,
                     class_names=data.class_names, checkpoint=str(checkpoint),
                     model_dir=str(output_dir),
                     parameters=sum(p.numel() for p in model.parameters()),
                     zero_shot_accuracy=result["accuracy"],
                     zero_shot_per_template=result["per_template"],
                     zero_shot_per_class=per_class)

    # save_pretrained into a staging folder, moved into place once complete.
    staging = staging_dir(output_dir)
    try:
        model.save_pretrained(staging)
        from transformers import CLIPProcessor

        CLIPProcessor(image_processor=build_image_processor(mean, std, side),
                      tokenizer=tokenizer).save_pretrained(staging)
        write_text(staging / "training_meta.json", json.dumps(meta, indent=2) + "\n")
        give_umask_permissions(staging)
        replace_directory(staging, output_dir)
    except SafetensorError as err:  # an I/O error of the weights' writer (disk full, size limit)
        raise StageError(f"{output_dir}: the model could not be saved ({short_cause(err)}); "
                         f"what was there before is kept") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    results = write_text(folders["results"] / f"clip_{stem}_zero_shot.json",
                         json.dumps(meta, indent=2) + "\n")
    figure = confusion_figure(data.y_test, predicted, data.class_names,
                              f"small CLIP on {s.dataset}: zero-shot test accuracy "
                              f"{result['accuracy']:.4f} (templates averaged)")
    png = save_figure(figure, folders["visualizations"] / f"clip_{stem}_zero_shot.png")
    if len(losses) > done:  # a rerun that trained nothing logs nothing again
        log.image_file("zero_shot_confusion", png, len(losses))
    log.close()
    import matplotlib.pyplot as plt

    plt.close(figure)
    print(f"zero-shot test accuracy {result['accuracy']:.4f} (templates averaged); per template: "
          + ", ".join(f"'{t}' {a:.4f}" for t, a in result["per_template"].items()))
    print(f"wrote {output_dir} (load with CLIPModel/CLIPProcessor.from_pretrained), {results}, "
          f"{png}")


if __name__ == "__main__":
    run_stage(main)
