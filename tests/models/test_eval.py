"""``pacs-vlm eval``: metrics on hand-computed values, the three VQA layouts, report pairs, bad input.

The end-to-end tests run the real command line as a subprocess with the tiny random LLaVA
checkpoint (``smoke_model_dir``) on CPU, over images made from pydicom's bundled CT and MR files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image

from models.backend import GenerationRequest, GenerationResult, ModelIdentity
from models.evaluation.datasets import (
    DatasetError,
    detect_layout,
    load_report_pairs,
    load_vqa,
)
from models.evaluation.metrics import (
    closed_correct,
    longest_common_subsequence,
    normalise_answer,
    open_recall,
    rouge_l,
)
from models.evaluation.runner import VQA_PROMPT, findings_document, run_reports, run_vqa, vqa_scores

ROOT = Path(__file__).resolve().parents[2]
#: pydicom's bundled test files (read from the installed package; nothing is downloaded).
PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


# ---------------------------------------------------------------- metrics


def test_normalise_answer_folds_case_punctuation_and_articles() -> None:
    assert normalise_answer("  The LEFT-lung! ") == "left lung"
    assert normalise_answer("An MRI, T2.") == "mri t2"
    assert normalise_answer("the") == ""


@pytest.mark.parametrize(
    ("prediction", "answer", "expected"),
    [
        ("Yes, there is a pleural effusion.", "yes", True),
        ("No.", "Yes", False),
        ("There is no effusion; yes, I am sure.", "no", True),  # the first yes/no word decides
        ("The image is normal.", "no", False),  # no yes/no word at all
        ("MRI", "mri", True),
        ("The MRI.", "MRI", True),
        ("T2 weighted MRI", "MRI", False),  # not an exact match
        ("Left. The mass is in the left lobe.", "left", True),  # first clause
        ("right", "left", False),
    ],
)
def test_closed_accuracy_normalisation(prediction: str, answer: str, expected: bool) -> None:
    assert closed_correct(prediction, answer) is expected


def test_open_recall_is_the_fraction_of_reference_tokens_found() -> None:
    assert open_recall("The lesion is in the left lung", "left lung") == 1.0
    assert open_recall("right lung", "left upper lung") == pytest.approx(1 / 3)
    assert open_recall("lung", "lung lung") == 0.5  # counts are clipped
    assert open_recall("anything", "the") == 0.0  # nothing to recall
    assert open_recall("", "liver") == 0.0


def test_longest_common_subsequence_on_a_textbook_case() -> None:
    assert longest_common_subsequence(list("ABCBDAB"), list("BDCABA")) == 4
    assert longest_common_subsequence([], ["a"]) == 0


def test_rouge_l_on_known_strings() -> None:
    # candidate 6 tokens, reference 5, LCS "the cat on the mat" = 5: P = 5/6, R = 1, F = 10/11
    score = rouge_l("The cat sat on the mat.", "the cat on the mat")
    assert score.precision == pytest.approx(5 / 6)
    assert score.recall == 1.0
    assert score.fmeasure == pytest.approx(10 / 11)
    # LCS "no effusion" = 2 of 4 and of 3 tokens: P = 1/2, R = 2/3, F = 4/7
    score = rouge_l("no pleural effusion seen", "no effusion present")
    assert score.fmeasure == pytest.approx(4 / 7)
    assert rouge_l("a b c", "d e").fmeasure == 0.0
    assert rouge_l("", "d e").fmeasure == 0.0


def test_findings_document_splits_prose_into_sentence_findings() -> None:
    document = findings_document("The lungs are clear. No pleural effusion.\nHeart size is normal.")
    assert [f["text"] for f in document["findings"]] == [
        "The lungs are clear.",
        "No pleural effusion.",
        "Heart size is normal.",
    ]


# ---------------------------------------------------------------- fixture sets from pydicom's images


def _dicom_png(name: str, target: Path) -> Path:
    dataset = pydicom.dcmread(PYDICOM_FILES / name)
    pixels = dataset.pixel_array.astype(np.float64)
    scaled = (pixels - pixels.min()) / max(float(np.ptp(pixels)), 1.0) * 255
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(scaled.astype(np.uint8), mode="L").save(target)
    return target


@pytest.fixture
def vqa_sets(tmp_path: Path) -> dict[str, Path]:
    """One small file per layout, with images converted from pydicom's CT and MR test files."""
    rad = tmp_path / "vqa-rad"
    _dicom_png("CT_small.dcm", rad / "images" / "synpic_ct.jpg")
    _dicom_png("MR_small.dcm", rad / "images" / "synpic_mr.png")
    rad_items = [
        {"qid": 1, "image_name": "synpic_ct.jpg", "question": "Is this a CT?", "answer": "yes",
         "answer_type": "CLOSED", "question_type": "MODALITY", "phrase_type": "freeform", "image_organ": "HEAD"},
        {"qid": 2, "image_name": "synpic_mr.png", "question": "What modality is shown?", "answer": "MRI",
         "answer_type": "OPEN", "question_type": "MODALITY", "phrase_type": "para", "image_organ": "HEAD"},
        {"qid": 3, "image_name": "synpic_ct.jpg", "question": "Is there a fracture?", "answer": "no",
         "answer_type": "CLOSED", "question_type": "ABN", "phrase_type": "freeform", "image_organ": "HEAD"},
    ]  # fmt: skip
    (rad / "VQA_RAD Dataset Public.json").write_text(json.dumps(rad_items))

    slake = tmp_path / "slake"
    _dicom_png("MR_small.dcm", slake / "imgs" / "xmlab0" / "source.jpg")
    slake_items = [
        {"img_id": 0, "img_name": "xmlab0/source.jpg", "question": "What modality is used to take this image?",
         "answer": "MRI", "q_lang": "en", "location": "Brain", "modality": "MRI", "answer_type": "OPEN",
         "base_type": "vqa", "content_type": "Modality", "triple": ["vhead", "_", "_"], "qid": 9},
        {"img_id": 0, "img_name": "xmlab0/source.jpg", "question": "这张图片是什么模态?", "answer": "MRI",
         "q_lang": "zh", "location": "Brain", "modality": "MRI", "answer_type": "OPEN", "base_type": "vqa",
         "content_type": "Modality", "triple": ["vhead", "_", "_"], "qid": 10},
        {"img_id": 0, "img_name": "xmlab0/source.jpg", "question": "Is this a brain image?", "answer": "Yes",
         "q_lang": "en", "location": "Brain", "modality": "MRI", "answer_type": "CLOSED", "base_type": "vqa",
         "content_type": "Organ", "triple": ["vhead", "_", "_"], "qid": 11},
    ]  # fmt: skip
    (slake / "test.json").write_text(json.dumps(slake_items, ensure_ascii=False))

    path = tmp_path / "pathvqa"
    _dicom_png("CT_small.dcm", path / "images" / "test_0001.jpg")
    path_items = [
        {"id": "t1", "image": "test_0001", "question": "is this tissue stained?", "answer": "yes"},
        {"id": "t2", "image": "test_0001.jpg", "question": "what does this show?", "answer": "necrosis",
         "answer_type": "other"},
    ]  # fmt: skip
    (path / "pathvqa_test.json").write_text(json.dumps(path_items))
    return {
        "vqa-rad": rad / "VQA_RAD Dataset Public.json",
        "slake": slake / "test.json",
        "pathvqa": path / "pathvqa_test.json",
    }


def test_each_layout_is_detected_and_read(vqa_sets: dict[str, Path]) -> None:
    for layout, path in vqa_sets.items():
        assert detect_layout(json.loads(path.read_text())[0]) == layout
    rad = load_vqa(vqa_sets["vqa-rad"])
    assert [(i.item_id, i.closed, i.image.name) for i in rad.items] == [
        ("1", True, "synpic_ct.jpg"),
        ("2", False, "synpic_mr.png"),
        ("3", True, "synpic_ct.jpg"),
    ]
    slake = load_vqa(vqa_sets["slake"])
    assert [i.item_id for i in slake.items] == ["9", "11"] and slake.skipped_language == 1
    assert [i.item_id for i in load_vqa(vqa_sets["slake"], language="all").items] == ["9", "10", "11"]
    pathvqa = load_vqa(vqa_sets["pathvqa"])
    assert [(i.closed, i.image.name) for i in pathvqa.items] == [(True, "test_0001.jpg"), (False, "test_0001.jpg")]
    assert len(load_vqa(vqa_sets["vqa-rad"], limit=2).items) == 2


def test_json_lines_are_read(vqa_sets: dict[str, Path]) -> None:
    source = vqa_sets["pathvqa"]
    lines = source.with_suffix(".jsonl")
    lines.write_text("\n".join(json.dumps(item) for item in json.loads(source.read_text())) + "\n")
    assert [i.item_id for i in load_vqa(lines).items] == ["t1", "t2"]


def test_an_image_outside_the_folder_is_refused(tmp_path: Path) -> None:
    _dicom_png("CT_small.dcm", tmp_path / "secret.png")
    (tmp_path / "set" / "images").mkdir(parents=True)
    item = {"image_name": "../../secret.png", "question": "q?", "answer": "yes", "answer_type": "CLOSED"}
    (tmp_path / "set" / "bad.json").write_text(json.dumps([item]))
    with pytest.raises(DatasetError, match="outside the image folder"):
        load_vqa(tmp_path / "set" / "bad.json")


class CountingBackend:
    """Answers every request with fixed text and records batch sizes (stands in for a model only to count calls)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.batches: list[int] = []

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity("fixed-answer", "none", "llava")

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        self.batches.append(len(requests))
        return [GenerationResult(r.request_id, self.text, 1, 1, 0.0) for r in requests]


def test_run_vqa_batches_requests_and_scores(vqa_sets: dict[str, Path]) -> None:
    items = load_vqa(vqa_sets["vqa-rad"]).items + load_vqa(vqa_sets["slake"]).items
    backend = CountingBackend("Yes, it is an MRI.")
    seen: list[int] = []
    predictions = run_vqa(backend, items, batch_size=2, progress=lambda batch: seen.append(len(batch)))
    assert backend.batches == [2, 2, 1] and seen == [2, 2, 1]
    # closed: yes (right), no (wrong), Yes (right); open: "MRI" found twice
    scores = vqa_scores("mixed", predictions)
    assert (scores.closed_n, scores.open_n) == (3, 2)
    assert scores.closed_accuracy == pytest.approx(2 / 3)
    assert scores.open_recall == 1.0
    assert predictions[0].as_json("mixed")["prompt"] == VQA_PROMPT.key == "eval-vqa/v1"


def test_report_pairs_given_as_texts_score_without_a_model(tmp_path: Path) -> None:
    pairs_file = tmp_path / "pairs.json"
    pairs_file.write_text(
        json.dumps(
            [
                ["No pleural effusion. Heart size normal.", "No pleural effusion. Heart size normal."],
                {"id": "s2", "draft": "Small left pleural effusion.", "reference": "No pleural effusion."},
            ]
        )
    )
    pairs = load_report_pairs(pairs_file)
    from integration.reports.agreement import compare_drafts

    scores = run_reports(None, pairs, compare=lambda a, b: compare_drafts(a, b).score)
    assert scores[0].rouge.fmeasure == 1.0 and scores[0].agreement == 1.0
    # LCS "pleural effusion" = 2 of 4 and of 3 tokens: F = 4/7; negation keeps the findings apart
    assert scores[1].rouge.fmeasure == pytest.approx(4 / 7)
    assert scores[1].agreement == 0.0


# ---------------------------------------------------------------- the command line, end to end


def pacs_vlm(*args: str | Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.upper().startswith("PACSVLM_")}
    environment.update({"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb", "PACSVLM_MODEL_DEVICE": "cpu"}, **env)
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", "eval", *map(str, args)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_eval_vqa_end_to_end_with_the_smoke_model(
    vqa_sets: dict[str, Path], smoke_model_dir: Path, tmp_path: Path
) -> None:
    results = tmp_path / "results.jsonl"
    done = pacs_vlm(
        "vqa", *vqa_sets.values(), "--model", smoke_model_dir, "--batch-size", "2", "--output", results,
        "--max-new-tokens", "8",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    for header in ("set", "closed acc. %", "open recall %", "ROUGE-L %", "agreement %"):
        assert header in done.stdout
    for name in ("VQA_RAD Dataset Public", "test", "pathvqa_test"):
        assert name in done.stdout
    assert "eval vqa: 3 set(s), 7 items" in done.stdout  # 3 + 2 English SLAKE + 2
    lines = _lines(results)
    assert len(lines) == 7
    assert [(line["set"], line["id"]) for line in lines] == [
        ("VQA_RAD Dataset Public", "1"),
        ("VQA_RAD Dataset Public", "2"),
        ("VQA_RAD Dataset Public", "3"),
        ("test", "9"),
        ("test", "11"),
        ("pathvqa_test", "t1"),
        ("pathvqa_test", "t2"),
    ]
    for line in lines:
        assert isinstance(line["prediction"], str) and line["prompt"] == "eval-vqa/v1"
        assert (line["correct"] is None) == (line["answer_type"] == "open")
        assert (line["recall"] is None) == (line["answer_type"] == "closed")


def test_eval_vqa_limit_and_format(vqa_sets: dict[str, Path], smoke_model_dir: Path, tmp_path: Path) -> None:
    results = tmp_path / "limited.jsonl"
    done = pacs_vlm(
        "vqa", vqa_sets["slake"], "--format", "slake", "--language", "all", "--limit", "2", "--model",
        smoke_model_dir, "--output", results, "--max-new-tokens", "4",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [line["id"] for line in _lines(results)] == ["9", "10"]


def test_eval_reports_end_to_end(vqa_sets: dict[str, Path], smoke_model_dir: Path, tmp_path: Path) -> None:
    images = vqa_sets["vqa-rad"].parent / "images"
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        json.dumps(
            {"id": "study-1", "images": ["synpic_ct.jpg", "synpic_mr.png"], "reference": "No acute abnormality."}
        )
        + "\n"
        + json.dumps({"study": "study-2", "draft": "No acute abnormality.", "reference": "No acute abnormality."})
        + "\n"
    )
    results = tmp_path / "reports.jsonl"
    done = pacs_vlm(
        "reports", pairs, "--images", images, "--model", smoke_model_dir, "--output", results,
        "--max-new-tokens", "16",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "eval reports: 1 set(s), 2 pairs" in done.stdout
    lines = _lines(results)
    assert [line["id"] for line in lines] == ["study-1", "study-2"]
    assert lines[0]["images"] == ["synpic_ct.jpg", "synpic_mr.png"] and lines[0]["prompt"] == "general/v3"
    assert lines[1]["rouge_l"] == 1.0 and lines[1]["agreement"] == 1.0 and lines[1]["prompt"] is None


def test_eval_reports_of_texts_needs_no_model(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([["The cat sat on the mat.", "the cat on the mat"]]))
    done = pacs_vlm("reports", pairs)
    assert done.returncode == 0, done.stderr
    assert "ROUGE-L 90.9%" in done.stdout  # 10/11
    assert "drafts as given" in done.stdout


def _assert_clear_error(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    for fragment in fragments:
        assert fragment in done.stderr, done.stderr


def test_bad_inputs_exit_2_with_a_clear_error(vqa_sets: dict[str, Path], smoke_model_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps([{"image_name": "nowhere.png", "question": "q?", "answer": "yes",
                                    "answer_type": "CLOSED", "qid": 7}]))  # fmt: skip
    _assert_clear_error(pacs_vlm("vqa", missing, "--model", smoke_model_dir), "item 7", "'nowhere.png' not found")

    malformed = tmp_path / "malformed.json"
    malformed.write_text('[{"image_name": "a.png", "question": ')
    _assert_clear_error(pacs_vlm("vqa", malformed, "--model", smoke_model_dir), "malformed.json", "not valid JSON")

    not_an_image = vqa_sets["vqa-rad"].parent / "images" / "synpic_ct.jpg"
    not_an_image.write_bytes(b"this is not a picture")
    _assert_clear_error(pacs_vlm("vqa", vqa_sets["vqa-rad"], "--model", smoke_model_dir), "not a readable image")

    _assert_clear_error(pacs_vlm("vqa", vqa_sets["slake"], "--format", "coco"), "unknown --format")
    _assert_clear_error(pacs_vlm("vqa", vqa_sets["slake"]), "no model configured")
    _assert_clear_error(pacs_vlm("vqa", vqa_sets["slake"], "--model", tmp_path / "no-model"), "Model not staged")

    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([{"id": "s1", "reference": "Normal."}]))
    _assert_clear_error(pacs_vlm("reports", pairs), "item s1", "draft text or the image")
    assert not (tmp_path / "results.jsonl").exists()
