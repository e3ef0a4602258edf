"""Generation throughput of real-size VLM architectures with random weights (no checkpoint needed).

Builds LLaVA-1.5-7B (CLIP ViT-L/14-336 + Llama-7B) and MedGemma-4B (SigLIP-400M + Gemma 3 4B) from their
published configurations with randomly initialised weights, in bf16 on CUDA (fp32 on CPU), and times
``generate`` for studies of 8 images with 256 new tokens forced (``min_new_tokens``), at batch 1 and batched.
Prints a table and, per row, the ratio of the measured decode rate to the memory-bandwidth bound
(every decode step reads all weights once: ``weight bytes / HBM bandwidth`` seconds per step).

``--tiny`` builds the same architectures at toy sizes so the whole path runs on a CPU in seconds (the
test suite runs it); its numbers mean nothing.

The last line is ``gpu_generate <arch>_b1_studies_per_s=... <arch>_bN_studies_per_s=... ...``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

#: HBM bandwidth by device name fragment, bytes/s (vendor figures).
HBM_BANDWIDTH = {"H200": 4.8e12, "H100 PCIe": 2.0e12, "H100": 3.35e12, "A100": 2.0e12, "L40S": 0.864e12}


@dataclass
class Row:
    """One measurement: an architecture at one batch size."""

    arch: str
    batch: int
    seconds: float
    studies_per_s: float
    tokens_per_s: float
    bound_tokens_per_s: float | None

    @property
    def ratio(self) -> float | None:
        """Measured tokens/s over the bandwidth bound (None without a known bound)."""
        return None if not self.bound_tokens_per_s else self.tokens_per_s / self.bound_tokens_per_s


def llava_config(tiny: bool) -> Any:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    if tiny:
        vision = CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=56,
            patch_size=14,
        )
        text = LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=1024
        )
        return LlavaConfig(vision_config=vision, text_config=text, image_token_index=1000, image_seq_length=16)
    vision = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
    )
    text = LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32064,
        max_position_embeddings=8192,
    )
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=32000, image_seq_length=576)


def gemma3_config(tiny: bool) -> Any:
    from transformers import Gemma3Config, Gemma3TextConfig, SiglipVisionConfig

    if tiny:
        vision = SiglipVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=56,
            patch_size=14,
        )
        text = Gemma3TextConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            vocab_size=1100,
            sliding_window=64,
        )
        return Gemma3Config(
            vision_config=vision, text_config=text, mm_tokens_per_image=4, image_token_index=1050, boi_token_index=1051
        )
    vision = SiglipVisionConfig(
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=27,
        num_attention_heads=16,
        image_size=896,
        patch_size=14,
    )
    text = Gemma3TextConfig(
        hidden_size=2560,
        intermediate_size=10240,
        num_hidden_layers=34,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        vocab_size=262208,
        sliding_window=1024,
        max_position_embeddings=131072,
    )
    return Gemma3Config(vision_config=vision, text_config=text, mm_tokens_per_image=256, image_token_index=262144)


ARCHITECTURES = {"llava-1.5-7b": llava_config, "medgemma-4b": gemma3_config}


def image_tokens(config: Any) -> int:
    return int(getattr(config, "mm_tokens_per_image", 0) or config.image_seq_length)


def build(arch: str, tiny: bool, device: Any, dtype: Any) -> Any:
    import torch
    from transformers import AutoModelForImageTextToText

    config = ARCHITECTURES[arch](tiny)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    return model.eval()


def inputs(model: Any, batch: int, images: int, text_tokens: int, device: Any, dtype: Any) -> dict[str, Any]:
    import torch

    config = model.config
    per_image = image_tokens(config)
    size = config.vision_config.image_size
    vocab = config.text_config.vocab_size
    token = config.image_token_index
    text = torch.randint(10, min(vocab, token) - 10, (batch, text_tokens), device=device)
    image_ids = torch.full((batch, images * per_image), token, device=device)
    input_ids = torch.cat([text[:, :1], image_ids, text[:, 1:]], dim=1)
    pixel_values = torch.randn(batch * images, 3, size, size, device=device, dtype=dtype)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "pixel_values": pixel_values}


def measure(model: Any, batch: int, images: int, new_tokens: int, device: Any, dtype: Any) -> float:
    import torch

    feed = inputs(model, batch, images, 32, device, dtype)
    with torch.inference_mode():
        model.generate(**feed, max_new_tokens=4, min_new_tokens=4, do_sample=False)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        out = model.generate(**feed, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
    assert out.shape[1] - feed["input_ids"].shape[1] == new_tokens
    return time.perf_counter() - started


def bandwidth(device: Any) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((value for key, value in HBM_BANDWIDTH.items() if key in name), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="toy sizes on whatever device (for the test suite)")
    parser.add_argument("--batch", type=int, default=8, help="batched case size (default 8)")
    parser.add_argument("--images", type=int, default=8, help="images per study (default 8)")
    parser.add_argument("--new-tokens", type=int, default=256, help="new tokens per study, forced (default 256)")
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), action="append", help="architectures (default all)")
    args = parser.parse_args()
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    console = Console()
    if device.type != "cuda" and not args.tiny:
        console.print("[yellow]no CUDA device: real-size models on the CPU will be very slow[/yellow]")
    hbm = bandwidth(device)
    rows: list[Row] = []
    for arch in args.arch or sorted(ARCHITECTURES):
        model = build(arch, args.tiny, device, dtype)
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        for batch in sorted({1, args.batch}):
            seconds = measure(model, batch, args.images, args.new_tokens, device, dtype)
            tokens = batch * args.new_tokens
            bound = batch / (weight_bytes / hbm) if hbm else None
            rows.append(Row(arch, batch, seconds, batch / seconds, tokens / seconds, bound))
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    title = f"generate: {args.images} images/study, {args.new_tokens} new tokens forced, {device} {dtype}"
    table = Table(
        "architecture", "batch", "seconds", "studies/s", "tokens/s", "bandwidth bound tok/s", "ratio", title=title
    )
    for r in rows:
        table.add_row(
            r.arch,
            str(r.batch),
            f"{r.seconds:.2f}",
            f"{r.studies_per_s:.3f}",
            f"{r.tokens_per_s:.1f}",
            f"{r.bound_tokens_per_s:.0f}" if r.bound_tokens_per_s else "-",
            f"{r.ratio:.2f}" if r.ratio is not None else "-",
        )
    console.print(table)
    summary = " ".join(f"{r.arch}_b{r.batch}_studies_per_s={r.studies_per_s:.3f}" for r in rows)
    print(f"gpu_generate {summary}")


if __name__ == "__main__":
    main()
