"""Generation throughput of real-size VLM architectures with random weights (no checkpoint needed).

Builds LLaVA-1.5-7B (CLIP ViT-L/14-336 + Llama-7B) and MedGemma-4B (SigLIP-400M + Gemma 3 4B) from their
published configurations with randomly initialised weights, in bf16 on CUDA (fp32 on CPU), and times
``generate`` for studies of 8 images with 256 new tokens forced (``min_new_tokens``), at batch 1 and batched.
Prints a table and, per row, the ratio of the measured decode rate to the memory-bandwidth bound
(every decode step reads all weights once: ``weight bytes / HBM bandwidth`` seconds per step).

``--tiny`` builds the same architectures at toy sizes so the whole path runs on a CPU in seconds (the
test suite runs it); its numbers mean nothing.

The last line is ``gpu_generate <arch>_b1_studies_per_s=... <arch>_bN_studies_per_s=... ...``.

``--case worker`` measures what a worker process gains from batching studies: a LLaVA-1.5-7B checkpoint with
random weights is staged on disk (the smoke model's tokenizer, processor and chat template; ``--tiny``: the
bench's toy LLaVA), loaded by :class:`~models.transformers_backend.TransformersBackend`, and ``--studies``
studies (``--images`` images each) are drafted one after another, then from one thread each through the
worker's :class:`~models.batching.BatchingBackend` (batches of ``--batch``), as Celery's threads pool does with
``pacs-vlm worker --batch-size N``.  Generation is greedy and stops at the end-of-sequence token as in the
worker.  Its last line is ``gpu_generate worker_sequential_studies_per_hour=... worker_batched_studies_per_hour=...
worker_speedup=...``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
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
    model_class: Any = AutoModelForImageTextToText
    with torch.device(device):
        model = model_class.from_config(config, dtype=dtype)
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


@dataclass
class WorkerRow:
    """One way of drafting the same studies in a worker process."""

    mode: str
    studies: int
    generate_calls: int
    seconds: float
    tokens_out: int

    @property
    def studies_per_hour(self) -> float:
        """Studies drafted per hour on this device."""
        return self.studies / self.seconds * 3600


def stage_llava(directory: Path, tiny: bool, device: Any, dtype: Any) -> Path:
    """Stage a LLaVA-1.5 checkpoint with random weights that the worker's backend loads like a real one.

    The smoke model supplies the tokenizer, processor and chat template; the weights are the bench's LLaVA
    architecture (7B, or toy sizes with ``tiny``), its image token and special tokens taken from the tokenizer.
    """
    import torch
    from transformers import AutoModelForImageTextToText

    from models.smoke import build_smoke_model

    build_smoke_model("llava", directory)
    staged = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    config = llava_config(tiny)
    config.image_token_index = staged["image_token_index"]
    config.vision_feature_layer = -2
    config.vision_feature_select_strategy = "default"
    vision = config.vision_config
    config.image_seq_length = (vision.image_size // vision.patch_size) ** 2
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config.text_config, name, staged["text_config"].get(name))
    config.text_config.vocab_size = max(config.text_config.vocab_size, staged["text_config"]["vocab_size"])
    (directory / "model.safetensors").unlink()
    torch.manual_seed(0)
    model_class: Any = AutoModelForImageTextToText
    with torch.device(device):
        model = model_class.from_config(config, dtype=dtype)
    model.save_pretrained(directory)
    del model
    processor_file = directory / "processor_config.json"
    processor = json.loads(processor_file.read_text(encoding="utf-8"))
    processor["image_processor"]["size"] = {"shortest_edge": vision.image_size}
    processor["image_processor"]["crop_size"] = {"height": vision.image_size, "width": vision.image_size}
    processor["patch_size"] = vision.patch_size
    processor_file.write_text(json.dumps(processor, indent=2) + "\n", encoding="utf-8")
    return directory


def study_requests(studies: int, images: int, new_tokens: int) -> list[Any]:
    """Synthetic studies: grey gradient images with a bright square, one prompt each."""
    from PIL import Image

    from models.backend import GenerationRequest

    def image(number: int) -> Image.Image:
        picture = Image.linear_gradient("L").resize((512, 512)).point(lambda value: (value + 17 * number) % 256)
        picture.paste(255, (128, 128, 256, 256))
        return picture.convert("RGB")

    return [
        GenerationRequest(
            request_id=f"study-{number}",
            prompt=f"Describe the findings of study {number}.",
            images=tuple(image(number * images + index) for index in range(images)),
            system_prompt="You are a radiology assistant.",
            max_new_tokens=new_tokens,
        )
        for number in range(studies)
    ]


def measure_worker(backend: Any, requests: list[Any], batch: int, wait_seconds: float, device: Any) -> list[WorkerRow]:
    """Draft the studies one by one, then concurrently through the batcher; the same backend for both."""
    import torch

    from models.batching import BatchingBackend

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    backend.generate(requests[:1])  # warm-up (and the lazy load), at batch 1 and at the batch size
    backend.generate(requests[:batch])
    synchronize()
    started = time.perf_counter()
    sequential = [backend.generate([request])[0] for request in requests]
    synchronize()
    rows = [
        WorkerRow(
            "sequential",
            len(requests),
            len(requests),
            time.perf_counter() - started,
            sum(r.tokens_out for r in sequential),
        )
    ]
    batcher = BatchingBackend(backend, batch_size=batch, wait_seconds=wait_seconds)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:  # one thread per held message, like Celery's
        batched = [result for results in pool.map(batcher.generate, [[r] for r in requests]) for result in results]
    synchronize()
    seconds = time.perf_counter() - started
    batcher.close()
    assert [r.request_id for r in batched] == [r.request_id for r in requests]
    rows.append(WorkerRow("batched", len(requests), batcher.batches, seconds, sum(r.tokens_out for r in batched)))
    return rows


def main_worker(args: argparse.Namespace, device: Any, dtype: Any, console: Console) -> None:
    """The worker-level case: sequential vs batched studies through the worker's backend and batcher."""
    from models.transformers_backend import TransformersBackend

    studies = args.studies or args.batch
    arch = "llava-1.5-7b"
    with tempfile.TemporaryDirectory(prefix="pacs-vlm-bench-") as folder:
        directory = stage_llava(Path(folder) / arch, args.tiny, device, dtype)
        backend = TransformersBackend(directory, device=str(device), max_new_tokens=args.new_tokens)
        rows = measure_worker(
            backend, study_requests(studies, args.images, args.new_tokens), args.batch, args.wait_ms / 1000, device
        )
    size = "toy sizes" if args.tiny else "random weights"
    title = (
        f"worker: {studies} studies of {args.images} images, up to {args.new_tokens} new tokens, "
        f"batches of {args.batch}, {arch} ({size}), {device} {dtype}"
    )
    table = Table("mode", "studies", "calls", "seconds", "studies/h", "tok out", "tok/s", title=title)
    for r in rows:
        table.add_row(
            r.mode,
            str(r.studies),
            str(r.generate_calls),
            f"{r.seconds:.2f}",
            f"{r.studies_per_hour:.1f}",
            str(r.tokens_out),
            f"{r.tokens_out / r.seconds:.1f}",
        )
    console.print(table)
    sequential, batched = rows
    print(
        f"gpu_generate worker_sequential_studies_per_hour={sequential.studies_per_hour:.1f} "
        f"worker_batched_studies_per_hour={batched.studies_per_hour:.1f} "
        f"worker_speedup={batched.studies_per_hour / sequential.studies_per_hour:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="toy sizes on whatever device (for the test suite)")
    parser.add_argument("--batch", type=int, default=8, help="batched case size (default 8)")
    parser.add_argument("--images", type=int, default=8, help="images per study (default 8)")
    parser.add_argument("--new-tokens", type=int, default=256, help="new tokens per study, forced (default 256)")
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), action="append", help="architectures (default all)")
    parser.add_argument(
        "--case",
        choices=("generate", "worker"),
        default="generate",
        help="generate: the model alone (default); worker: studies through the worker's backend and batcher",
    )
    parser.add_argument("--studies", type=int, help="worker case: studies to draft (default: --batch)")
    parser.add_argument("--wait-ms", type=float, default=200.0, help="worker case: batch wait window (default 200)")
    args = parser.parse_args()
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    console = Console()
    if device.type != "cuda" and not args.tiny:
        console.print("[yellow]no CUDA device: real-size models on the CPU will be very slow[/yellow]")
    if args.case == "worker":
        main_worker(args, device, dtype, console)
        return
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
