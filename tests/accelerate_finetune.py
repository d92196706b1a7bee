"""Fine-tune the tiny pipeline's UNet once on fixed latents (a helper the tests run, alone or
under ``accelerate launch``): argv = pipeline folder, method, batch size per process, output
file of the trained weights."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402

from stable_diffusion.finetune import FinetuneSettings, finetune, trainable_state  # noqa: E402
from stable_diffusion.pipelines import load_pipeline  # noqa: E402


def main() -> None:
    folder, method, batch, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    pipe = load_pipeline(folder, accelerator.device)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(8, 4, 8, 8, generator=generator)
    states = torch.randn(8, 16, 32, generator=generator)
    settings = FinetuneSettings(method=method, learning_rate=1e-2, epochs=2, batch_size=batch)
    finetune(pipe, latents, states, settings, out.with_suffix(".ckpt"), accelerator, {})
    if accelerator.is_main_process:
        torch.save(trainable_state(pipe.unet, method), out)


if __name__ == "__main__":
    main()
