"""Captions of a class: the phrasings the small CLIP learns from and the self-consuming loop
prompts with ("a photo of a Sneaker", "a black and white photo of the digit 3")."""

from __future__ import annotations

# Phrasings of a caption; "{}" is the class phrase ("a Sneaker", "an Ankle boot", "the digit 3").
CAPTION_TEMPLATES = ("a photo of {}", "a picture of {}", "an image of {}",
                     "a black and white photo of {}", "a low-resolution photo of {}")
DIGIT_DATASETS = ("mnist", "digits")


def class_phrase(dataset: str, class_name: str) -> str:
    """What a caption calls a class: 'the digit 3', 'a Sneaker', 'an Ankle boot'."""
    if dataset in DIGIT_DATASETS:
        return f"the digit {class_name}"
    article = "an" if class_name[:1].lower() in "aeiou" else "a"
    return f"{article} {class_name}"


def class_captions(dataset: str, class_names: list[str]) -> list[list[str]]:
    """captions[c][t]: template t applied to class c."""
    return [[template.format(class_phrase(dataset, name)) for template in CAPTION_TEMPLATES]
            for name in class_names]
