"""Tokenizers for smoke-test models, trained offline on a small built-in corpus.

A smoke-test model needs a real tokenizer of its family's shape (byte-level BPE with the
family's special tokens: image placeholders, bos/eos/pad, chat-turn markers) but nothing that
must be downloaded.  This module trains one in a few milliseconds with the ``tokenizers``
library on radiology-flavoured sentences, and wraps it as a transformers tokenizer so that it
is saved and loaded exactly like a real checkpoint's ``tokenizer.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: Radiology-report sentences and chat words: enough for a few hundred merges.
SMOKE_CORPUS: tuple[str, ...] = (
    "The chest radiograph shows no focal consolidation, pleural effusion or pneumothorax.",
    "Heart size is within normal limits. The mediastinal contours are unremarkable.",
    "There is a small left pleural effusion with adjacent atelectasis.",
    "No acute osseous abnormality. Degenerative changes of the thoracic spine.",
    "Endotracheal tube tip projects 4 cm above the carina.",
    "Right-sided central venous catheter terminates in the superior vena cava.",
    "Axial CT images of the chest were obtained without intravenous contrast.",
    "Lung window shows a 6 mm solid nodule in the right upper lobe.",
    "Mediastinal window: no enlarged mediastinal or hilar lymph nodes.",
    "Bone window: no lytic or sclerotic lesion.",
    "Non-contrast CT of the head: no intracranial haemorrhage, mass effect or midline shift.",
    "The ventricles and sulci are normal in size for age.",
    "Grey-white matter differentiation is preserved.",
    "MRI of the lumbar spine shows a disc bulge at L4-L5 without canal stenosis.",
    "Abdominal ultrasound: the liver is normal in size and echotexture.",
    "The gallbladder contains several small gallstones without wall thickening.",
    "Impression: no acute cardiopulmonary abnormality.",
    "Impression: findings compatible with right lower lobe pneumonia; follow-up is recommended.",
    "Findings: bibasilar opacities, likely atelectasis; infection is not excluded.",
    "Limitations: portable technique and patient rotation limit the assessment.",
    "Comparison: prior radiograph from last year.",
    "Technique: frontal and lateral views of the chest.",
    "The costophrenic angles are sharp. The hemidiaphragms are normal in position.",
    "There is cardiomegaly with pulmonary vascular congestion and interstitial oedema.",
    "A displaced fracture of the left distal radius is seen.",
    "Soft tissues are unremarkable. No subcutaneous emphysema.",
    "Answer with one JSON object: findings, impression and limitations.",
    '{"findings": [{"text": "no pneumothorax", "images": [1, 2]}], "impression": "normal", "limitations": ""}',
    "Image 1, image 2 and image 3 are frontal, lateral and oblique views.",
    "You are a radiology assistant drafting a preliminary report for a radiologist.",
    "You are a helpful assistant.",
    "USER: describe the image. ASSISTANT: the image shows a normal chest.",
    "user assistant system model",
    "Describe the findings in these images.",
    "Picture 1: Picture 2: Video 1:",
    "0 1 2 3 4 5 6 7 8 9 10 12 15 20 25 30 40 50 100 mm cm HU",
)

#: Target vocabulary size (special tokens and the 256 byte symbols included).
SMOKE_VOCAB_SIZE = 768


def train_smoke_tokenizer(
    *,
    special_tokens: Sequence[str],
    eos_token: str,
    pad_token: str,
    bos_token: str | None = None,
    unk_token: str | None = None,
    add_bos_token: bool = False,
    named_tokens: Mapping[str, str] | None = None,
    vocab_size: int = SMOKE_VOCAB_SIZE,
) -> Any:
    """Train a byte-level BPE tokenizer with a family's special tokens; a fast tokenizer ready for ``save_pretrained``.

    Parameters
    ----------
    special_tokens : sequence of str
        Every special token of the family, in id order (they get the first ids).
    eos_token, pad_token : str
        End-of-sequence and padding tokens (must be in ``special_tokens``).
    bos_token, unk_token : str, optional
        Beginning-of-sequence and unknown tokens, where the family has them.
    add_bos_token : bool
        Whether encoding prepends ``bos_token`` (as Llama and Gemma tokenizers do).
    named_tokens : Mapping of str to str, optional
        Model-specific named tokens (``image_token``, ``boi_token`` ...) the processors look up.
    vocab_size : int
        Target vocabulary size.

    Raises
    ------
    ValueError
        When a named or required token is not in ``special_tokens``, or ``add_bos_token`` has no ``bos_token``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import TokenizersBackend

    named = dict(named_tokens or {})
    required = [token for token in (eos_token, pad_token, bos_token, unk_token, *named.values()) if token]
    missing = [token for token in required if token not in special_tokens]
    if missing:
        raise ValueError(f"special tokens {missing} are not in special_tokens")

    tokenizer = Tokenizer(models.BPE(unk_token=unk_token))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(SMOKE_CORPUS, trainer)
    if add_bos_token:
        if bos_token is None:
            raise ValueError("add_bos_token needs a bos_token")
        bos_id = tokenizer.token_to_id(bos_token)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A", pair=f"{bos_token} $A {bos_token} $B", special_tokens=[(bos_token, bos_id)]
        )
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)

    tokenizer_class: Any = TokenizersBackend
    return tokenizer_class(
        tokenizer_object=tokenizer,
        bos_token=bos_token,
        eos_token=eos_token,
        pad_token=pad_token,
        unk_token=unk_token,
        extra_special_tokens=named,
    )
