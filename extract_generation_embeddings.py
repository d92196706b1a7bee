"""Embed COCO captions and the images of each generation of a self-consuming text-to-image loop
with CLIP, pairing every image with the caption of its own COCO image id.

Captions: for each image id, its first caption (lowest annotation id); the caption set is the
first NUM_CAPTIONS image ids in ascending order. With PAIRING 'id' those ids are taken among the
ids that both have a caption and appear in at least one generation folder (so the captions are the
prompts of the generated images); with PAIRING 'position' among all annotated ids. A malformed
annotation (an image_id that is not an integer, a caption that is not a non-empty string) stops
the stage with its position in the file: pairing must be exact, and skipping it would silently
change which caption is an image's first.
Images: PAIRING 'id' reads the COCO image id from each file name (COCO_train2014_000000000009.jpg,
000000000009.png, gen_9.png: the digits after the last '_' or the whole stem); a file whose id is
not among the loaded captions is reported and skipped. PAIRING 'position' pairs the i-th file in
natural name order with the i-th caption, for folders whose names carry no ids (COCO-named files
are refused). Unreadable images are reported by name, skipped and counted in ``meta``.
PREPROCESSING 'fast' decodes at reduced size on the CPU and resizes, crops and normalises on the
device (see clip_tools/clip_images.py); 'processor' runs the Hugging Face image processor image
by image.

Writes OUTPUT_DIR/coco_caption_embeddings.npz (text_embeddings, captions, image_ids) and one
OUTPUT_DIR/gen_<g>_embeddings.npz per generation (image_embeddings, text_embeddings of each
image's caption, captions, image_files, image_ids), every embedding L2-normalised in float32;
nothing is written unless every generation has images to embed.
Sharding: with SHARD 'i/n' the images (and captions), in ascending id order, are cut into batches
of BATCH_SIZE and batch j belongs to shard j mod n; each shard writes its own files to
OUTPUT_DIR/shards/, and the shard that finds all n present joins them (or run with --merge) into
the usual files, identical to an unsharded run's (each batch is computed the same way).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from clip_tools.clip_embedding import (
    COCO_NAME,
    IMAGE_SUFFIXES,
    batch_blocks,
    embed_captions,
    embed_images,
    ids_by_file,
    list_images,
    load_clip,
)
from clip_tools.clip_images import PixelPipeline, image_batches
from dataio.artifacts import (
    ensure_output_dir,
    hold_output_lock,
    holds_output_locks,
    load_npz,
    make_meta,
    save_npz,
    weights_fingerprint,
)
from dataio.coco import CaptionSet, parse_shard, read_first_captions, select_captions
from evaluation.generation_metrics import check_generations
from runtime.settings import SettingsError, configure, pick
from runtime.stage import StageError, pick_device, run_stage, seed_everything

# ---------------------------------------------------------------- settings
ANNOTATION_FILE = "data/coco/annotations/captions_train2014.json"  # COCO captions JSON
GENERATION_DIR_PATTERN = "data/coco/sd_to_sd_cfg_7_steps_50_gen_{g}"  # one folder per generation
GENERATIONS = (0, 4, 10)  # generations to embed, any list [>= 0]
MODEL = "openai/clip-vit-base-patch32"  # CLIP: a name in the local HF cache, or a local directory
NUM_CAPTIONS = 100  # caption ids to embed: the first N image ids in ascending order [>= 1]
PAIRING = "id"  # 'id': COCO id in file names; 'position': i-th file, i-th caption [id | position]
PREPROCESSING = "fast"  # fast (resize etc. on the device) or the HF processor [fast | processor]
BATCH_SIZE = 64  # images or captions per forward pass [>= 1]
WORKERS = 2  # DataLoader worker processes that decode images (0: main process) [>= 0]
DEVICE = "auto"  # auto (cuda, then mps, then cpu), cuda, mps or cpu
SEED = 0  # seeds torch and numpy; the extraction itself draws nothing at random [seed]
SHARD = ""  # 'i/n' (0 <= i < n): embed only shard i of n into OUTPUT_DIR/shards; '': everything
MERGE = False  # only join the shard files in OUTPUT_DIR/shards into the usual files
OUTPUT_DIR = "data/embeddings"  # where the NPZ files are written
# ---------------------------------------------------------------- end of settings



@dataclass(frozen=True)
class ExtractSettings:
    """What this run embeds, with which model, and where it writes."""

    annotation_file: str
    generation_dir_pattern: str
    generations: tuple[int, ...]
    model: str
    num_captions: int
    pairing: str
    preprocessing: str
    batch_size: int
    workers: int
    seed: int
    shard: str
    merge: bool
    output_dir: str


CAPTION_FILE = "coco_caption_embeddings.npz"
# Settings that may differ between the shards of one run (they do not change the numbers).
SHARD_FREE_SETTINGS = ("shard", "merge", "workers", "device", "output_dir")


@dataclass
class GenerationImages:
    """The image files of one generation folder paired with caption rows, and what was skipped."""

    folder: Path
    files: list[Path]
    image_ids: list[int]
    caption_rows: list[int]
    no_caption: list[str]
    not_images: int


def pair_by_id(folder: Path, files: list[Path], file_ids: dict[Path, int],
               caption_set: CaptionSet, not_images: int) -> GenerationImages:
    """Pair each file with the caption row of its image id; others are listed as skipped."""
    row_of_id = {int(image_id): row for row, image_id in enumerate(caption_set.image_ids)}
    kept = sorted((file_ids[p], p) for p in files if file_ids[p] in row_of_id)
    no_caption = [p.name for p in files if file_ids[p] not in row_of_id]
    return GenerationImages(folder, [p for _, p in kept], [i for i, _ in kept],
                            [row_of_id[i] for i, _ in kept], no_caption, not_images)


def pair_by_position(folder: Path, files: list[Path], caption_set: CaptionSet,
                     not_images: int) -> GenerationImages:
    """Pair the i-th file (natural name order) with the i-th caption; extra files are skipped."""
    coco_named = [p.name for p in files if COCO_NAME.search(p.stem)]
    if coco_named:
        raise StageError(f"{folder}: {len(coco_named)} file name(s) carry COCO image ids (e.g. "
                         f"{coco_named[0]}); pairing them by position would ignore those ids: "
                         f"use --pairing id")
    count = min(len(files), len(caption_set.captions))
    return GenerationImages(folder, files[:count],
                            [int(i) for i in caption_set.image_ids[:count]], list(range(count)),
                            [p.name for p in files[count:]], not_images)


def folder_of(generation: int, pattern: str) -> Path:
    """The folder of one generation, from --generation-dir-pattern."""
    if "{g}" not in pattern:
        raise SettingsError(f"--generation-dir-pattern {pattern!r} has no '{{g}}' "
                            f"where the generation number goes")
    try:
        return Path(pattern.format(g=generation))
    except (KeyError, IndexError, ValueError) as err:
        raise SettingsError(f"--generation-dir-pattern {pattern!r}: {{g}} is its only "
                            f"placeholder (write a literal brace as {{{{ or }}}}); "
                            f"{type(err).__name__}: {err}") from err


def shown(names: list[str], limit: int = 5) -> str:
    """A short list of names for a printed line."""
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def shard_path(shard_dir: Path, name: str, index: int, count: int) -> Path:
    """<output-dir>/shards/<name>.shard-<i>-of-<n>.npz for <output-dir>/<name>.npz."""
    return shard_dir / f"{Path(name).stem}.shard-{index}-of-{count}.npz"


def inputs_digest(caption_set: CaptionSet, pairs: dict[int, GenerationImages]) -> str:
    """A fingerprint of what every shard must agree on: caption ids and texts, paired files."""
    record = {"ids": caption_set.image_ids.tolist(), "captions": caption_set.captions,
              "files": {str(g): [p.name for p in paired.files] for g, paired in pairs.items()}}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def comparable(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in SHARD_FREE_SETTINGS}


def read_shards(shard_dir: Path, count: int) -> tuple[dict[str, Any] | None, str]:
    """Every shard file of an n-shard run, checked to belong to one run; (None, why) otherwise."""
    caption_keys = {"text_embeddings": (2, "f"), "captions": (1, "U"), "image_ids": (1, "iu")}
    image_keys = {"image_embeddings": (2, "f"), "image_files": (1, "U"), "image_ids": (1, "iu")}
    paths = [shard_path(shard_dir, CAPTION_FILE, i, count) for i in range(count)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        return None, f"shard file(s) {shown(missing, 3)} not found"
    captions = [load_npz(p, caption_keys, aligned=(tuple(caption_keys),)) for p in paths]
    reference = captions[0]["meta"]
    generations = [int(g) for g in reference.get("generations", [])]
    shards: dict[str, Any] = {"captions": captions, "generations": {}}
    for generation in generations:
        gen_paths = [shard_path(shard_dir, f"gen_{generation}_embeddings", i, count)
                     for i in range(count)]
        missing = [str(p) for p in gen_paths if not p.is_file()]
        if missing:
            return None, f"shard file(s) {shown(missing, 3)} not found"
        shards["generations"][generation] = [load_npz(p, image_keys, aligned=(tuple(image_keys),))
                                             for p in gen_paths]
    every = [(p, d) for p, d in zip(paths, captions, strict=True)] + [
        (shard_path(shard_dir, f"gen_{g}_embeddings", i, count), d)
        for g, files in shards["generations"].items() for i, d in enumerate(files)]
    for path, data in every:
        meta = data["meta"]
        mine, theirs = comparable(meta.get("settings", {})), comparable(
            reference.get("settings", {}))
        differing = [f"--{key.replace('_', '-')} {mine.get(key)!r} there, "
                     f"{theirs.get(key)!r} in {paths[0].name}"
                     for key in sorted(set(mine) | set(theirs)) if mine.get(key) != theirs.get(key)]
        if differing:
            return None, (f"{path} was made with other settings than {paths[0]} "
                          f"({'; '.join(differing)}); run every shard with the same settings")
        if meta.get("model_fingerprint") != reference.get("model_fingerprint"):
            return None, (f"{path} was embedded with other CLIP weights than {paths[0]} "
                          f"(fingerprints {meta.get('model_fingerprint')} and "
                          f"{reference.get('model_fingerprint')}: the model changed between the "
                          f"shard runs); run every shard again with one model")
        if meta.get("inputs_digest") != reference.get("inputs_digest"):
            return None, (f"{path} embeds other captions or image files than {paths[0]} (the "
                          f"folders changed between the shard runs); run every shard again")
    return shards, ""


def merge_shards(shards: dict[str, Any], count: int) -> tuple[dict[str, Any], dict[int, Any]]:
    """The caption file and each generation file of an unsharded run, from checked shards:
    rows in ascending image id, each image with the embedding of its caption."""
    captions = shards["captions"]
    ids = np.concatenate([d["image_ids"] for d in captions]).astype(np.int64)
    order = np.argsort(ids, kind="stable")
    meta = dict(captions[0]["meta"])
    if len(ids) != meta["n_captions"] or len(np.unique(ids)) != len(ids):
        raise StageError(f"the {count} caption shards hold {len(ids)} rows for "
                         f"{meta['n_captions']} captions: run the shards again")
    texts = np.concatenate([d["text_embeddings"] for d in captions])[order]
    caption_texts = np.array(np.concatenate([d["captions"] for d in captions])[order].tolist(),
                             dtype=str)
    ids = ids[order]
    meta.update(settings={**meta["settings"], "shard": ""}, merged_shards=count,
                shard_devices=sorted({d["meta"].get("device") for d in captions}))
    merged_captions = {"arrays": {"text_embeddings": texts, "captions": caption_texts,
                                  "image_ids": ids}, "meta": meta}
    row_of_id = {int(i): row for row, i in enumerate(ids)}
    merged = {}
    for generation, parts in shards["generations"].items():
        image_ids = np.concatenate([d["image_ids"] for d in parts]).astype(np.int64)
        order = np.argsort(image_ids, kind="stable")
        image_ids = image_ids[order]
        first = parts[0]["meta"]
        unreadable = sorted((item for d in parts for item in d["meta"]["unreadable_files"]),
                            key=lambda item: item["file"])
        if sum(d["meta"]["n_in_shard"] for d in parts) != first["n_paired"] or \
                len(image_ids) + len(unreadable) != first["n_paired"] or \
                len(np.unique(image_ids)) != len(image_ids):
            raise StageError(f"the {count} shards of generation {generation} do not add up to "
                             f"its {first['n_paired']} paired images: run the shards again")
        if len(image_ids) == 0:
            raise StageError(f"{first['folder']}: none of its {first['n_paired']} paired images "
                             f"could be read")
        rows = np.array([row_of_id[int(i)] for i in image_ids], dtype=np.int64)
        gen_meta = {k: v for k, v in first.items() if k not in ("n_in_shard", "shard")}
        gen_meta.update(settings={**first["settings"], "shard": ""}, n_embedded=len(image_ids),
                        n_unreadable=len(unreadable), unreadable_files=unreadable,
                        merged_shards=count, seconds=round(sum(d["meta"]["seconds"]
                                                               for d in parts), 3),
                        shard_devices=sorted({d["meta"].get("device") for d in parts}))
        merged[generation] = {"arrays": {
            "image_embeddings": np.concatenate([d["image_embeddings"] for d in parts])[order],
            "text_embeddings": texts[rows],
            "captions": np.array(caption_texts[rows].tolist(), dtype=str),
            "image_files": np.array(np.concatenate([d["image_files"] for d in parts])[order]
                                    .tolist(), dtype=str),
            "image_ids": image_ids}, "meta": gen_meta}
    return merged_captions, merged


def shard_count_in(shard_dir: Path) -> int:
    """The n of the caption shard files in ``shard_dir`` (one n only)."""
    found = sorted({int(m.group(1)) for p in shard_dir.glob("*.shard-*-of-*.npz")
                    if (m := re.search(r"\.shard-\d+-of-(\d+)\.npz$", p.name))})
    if not found:
        raise StageError(f"{shard_dir}: no shard files to merge; run with --shard i/n first")
    if len(found) > 1:
        raise StageError(f"{shard_dir}: holds shards of runs with n = "
                         f"{', '.join(map(str, found))}; pass --shard 0/N to say which to merge")
    return found[0]


def write_merged(output_dir: Path, shards: dict[str, Any], count: int) -> list[Path]:
    """Merge the shards of an n-shard run into the output folder's usual files; the paths
    written."""
    captions, generations = merge_shards(shards, count)
    written = [save_npz(output_dir / CAPTION_FILE, captions["arrays"], captions["meta"])]
    for generation, merged in generations.items():
        written.append(save_npz(output_dir / f"gen_{generation}_embeddings.npz",
                                merged["arrays"], merged["meta"]))
    return written


@holds_output_locks
def main(argv: list[str] | None = None) -> None:
    values = configure(globals(), argv)
    s = pick(ExtractSettings, values)
    shard = parse_shard(s.shard)
    check_generations(s.generations)
    seed_everything(s.seed)
    output_dir = Path(s.output_dir)
    shard_dir = output_dir / "shards"
    part = f"-shard-{shard[0]}" if shard and not s.merge else ""  # shards run side by side
    lock = (output_dir / f".lock-extract_generation_embeddings{part}",
            f"extract_generation_embeddings.py{part}")
    if s.merge:
        ensure_output_dir(output_dir)
        hold_output_lock(*lock)
        count = shard[1] if shard else shard_count_in(shard_dir)
        shards, why = read_shards(shard_dir, count)
        if shards is None:
            raise StageError(f"cannot merge the {count} shards: {why}")
        for path in write_merged(output_dir, shards, count):
            print(f"merged {count} shards -> {path}")
        return
    annotation_file = Path(s.annotation_file)
    first_captions = read_first_captions(annotation_file)

    # Every folder is listed (and every missing one reported) before the model is loaded.
    folders = {g: folder_of(g, s.generation_dir_pattern) for g in s.generations}
    listings = {g: (folder, *list_images(folder, s.generation_dir_pattern))
                for g, folder in folders.items()}
    empty = [str(folder) for folder, files, _ in listings.values() if not files]
    if empty:
        raise StageError(f"no images to embed in {', '.join(empty)} (image files end in "
                         f"{', '.join(sorted(IMAGE_SUFFIXES))})")
    file_ids = {g: ids_by_file(folder, files) for g, (folder, files, _) in listings.items()} \
        if s.pairing == "id" else {}
    wanted = {i for ids in file_ids.values() for i in ids.values()} if s.pairing == "id" else None
    caption_set = select_captions(first_captions, wanted, s.num_captions)
    if not caption_set.captions:
        raise StageError(f"{annotation_file}: none of the image ids in the generation folders "
                         f"({', '.join(str(folder) for folder, _, _ in listings.values())}) has a "
                         f"caption; are these the right annotations?")
    pairs = {g: pair_by_id(folder, files, file_ids[g], caption_set, not_images)
             if s.pairing == "id" else pair_by_position(folder, files, caption_set, not_images)
             for g, (folder, files, not_images) in listings.items()}
    unpaired = [str(p.folder) for p in pairs.values() if not p.files]
    if unpaired:
        raise StageError(f"no images to embed in {', '.join(unpaired)}: none is named by a COCO "
                         f"id among the {len(caption_set.captions)} caption ids")
    ensure_output_dir(shard_dir if shard else output_dir)
    hold_output_lock(*lock)  # taken once the inputs are checked: a refused run creates nothing

    device = pick_device(values["device"])
    model, processor = load_clip(s.model, device)
    pipeline = PixelPipeline.from_processor(processor.image_processor) \
        if s.preprocessing == "fast" else None
    part = f", shard {shard[0]}/{shard[1]}" if shard else ""
    print(f"model {s.model} on {device}, {s.preprocessing} preprocessing{part}; "
          f"{len(caption_set.captions)} captions from {annotation_file}", flush=True)
    started = time.perf_counter()
    caption_rows, text_embeddings = embed_captions(
        model, processor.tokenizer, caption_set.captions,
        batch_blocks(len(caption_set.captions), s.batch_size, shard), device)
    print(f"captions: {len(caption_rows)} embedded in {time.perf_counter() - started:.1f} s",
          flush=True)
    digest = inputs_digest(caption_set, pairs)
    common = {"model": s.model, "model_fingerprint": weights_fingerprint(model),
              "device": str(device), "annotation_file": str(annotation_file),
              "preprocessing": s.preprocessing, "pixel_pipeline": pipeline.__dict__ if pipeline
              else None, "inputs_digest": digest}

    results = {}
    for generation, paired in pairs.items():
        started = time.perf_counter()
        blocks = batch_blocks(len(paired.files), s.batch_size, shard)
        batches = image_batches(paired.files, blocks, s.preprocessing, processor.image_processor,
                                pipeline, s.workers, device)
        image_embeddings, kept, failed = embed_images(
            model, tqdm(batches, desc=f"gen {generation}", unit="batch", disable=None,
                        leave=False), pipeline, device)
        seconds = time.perf_counter() - started
        unreadable = [{"file": paired.files[row].name, "error": error} for row, error in failed]
        for item in unreadable:
            print(f"gen {generation}: unreadable image skipped: {paired.folder / item['file']} "
                  f"({item['error']})")
        if paired.no_caption:
            print(f"gen {generation}: {len(paired.no_caption)} image(s) without a caption among "
                  f"the {len(caption_set.captions)} loaded ids skipped: {shown(paired.no_caption)}")
        print(f"gen {generation}: {len(kept)} images embedded from {paired.folder} "
              f"({len(unreadable)} unreadable) in {seconds:.1f} s "
              f"({len(kept) / max(seconds, 1e-9):.1f} images/s)", flush=True)
        meta = make_meta(
            __file__, values, "coco-generations", s.seed, generation=int(generation),
            folder=str(paired.folder), pairing=s.pairing, caption_file=str(output_dir /
                                                                      CAPTION_FILE),
            n_image_files=len(paired.files) + len(paired.no_caption),
            n_paired=len(paired.files), n_embedded=len(kept), n_unreadable=len(unreadable),
            unreadable_files=unreadable, n_no_caption=len(paired.no_caption),
            no_caption_files=paired.no_caption, n_other_files_ignored=paired.not_images,
            seconds=round(seconds, 3), **common)
        results[generation] = (paired, image_embeddings, kept, meta, blocks)

    caption_meta = make_meta(
        __file__, values, "coco-captions", s.seed, n_captions=len(caption_set.captions),
        embedding_dim=int(text_embeddings.shape[1]), generations=list(s.generations),
        caption_order="ascending image id; per id the caption with the lowest annotation id",
        caption_ids_from="ids in the generation folders" if s.pairing == "id" else "all ids",
        **common)
    captions = np.array(caption_set.captions, dtype=str)
    if shard is None:
        unreadable_folders = [f"{paired.folder} (all {len(paired.files)} paired images)"
                              for paired, _, kept, _, _ in results.values() if len(kept) == 0]
        if unreadable_folders:
            raise StageError(f"no readable image in {', '.join(unreadable_folders)}; nothing "
                             f"written")
        path = save_npz(output_dir / CAPTION_FILE, {
            "text_embeddings": text_embeddings, "captions": captions,
            "image_ids": caption_set.image_ids}, caption_meta)
        print(f"wrote {path}")
        for generation, (paired, image_embeddings, kept, meta, _) in results.items():
            rows = np.array([paired.caption_rows[i] for i in kept], dtype=np.int64)
            path = save_npz(output_dir / f"gen_{generation}_embeddings.npz", {
                "image_embeddings": image_embeddings, "text_embeddings": text_embeddings[rows],
                "captions": np.array(captions[rows].tolist(), dtype=str),
                "image_files": np.array([paired.files[i].name for i in kept], dtype=str),
                "image_ids": caption_set.image_ids[rows]}, meta)
            print(f"wrote {path}")
        return

    index, count = shard
    path = save_npz(shard_path(shard_dir, CAPTION_FILE, index, count), {
        "text_embeddings": text_embeddings,
        "captions": np.array(captions[caption_rows].tolist(), dtype=str),
        "image_ids": caption_set.image_ids[caption_rows]},
        {**caption_meta, "shard": [index, count]})
    print(f"wrote {path}")
    for generation, (paired, image_embeddings, kept, meta, blocks) in results.items():
        path = save_npz(shard_path(shard_dir, f"gen_{generation}_embeddings", index, count), {
            "image_embeddings": image_embeddings,
            "image_files": np.array([paired.files[i].name for i in kept], dtype=str),
            "image_ids": np.array([paired.image_ids[i] for i in kept], dtype=np.int64)},
            {**meta, "shard": [index, count], "n_in_shard": sum(map(len, blocks))})
        print(f"wrote {path}")
    shards, why = read_shards(shard_dir, count)
    if shards is None:
        print(f"shard {index}/{count} done; not merging yet: {why}. The shard that completes "
              f"the set merges them, or run again with --merge")
        return
    for path in write_merged(output_dir, shards, count):
        print(f"all {count} shards present: merged -> {path}")


if __name__ == "__main__":
    run_stage(main, resumable=False)
