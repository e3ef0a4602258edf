"""Burned-in text (integration/imaging/burned_in.py): Debian's tesseract reads generated images with names, ids
and dates drawn into their pixels (Pillow, a TrueType font); the classifier marks them; redaction hides them.

Images are small (at most 320 pixels a side) so that each OCR takes well under a second.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytesseract  # type: ignore[import-untyped]
import pytest
from PIL import Image, ImageDraw, ImageFont

from integration.imaging.burned_in import (
    Box,
    BurnedInText,
    OcrUnavailable,
    OcrWord,
    TextKind,
    classify,
    find_burned_in_text,
    read_words,
    redact,
)

FONT_FILES = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    Path("/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf"),
)
PATIENT = "Kowalczyk^Agnieszka"


def font(size: int = 16) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A TrueType font tesseract reads well (DejaVu from Debian's fonts-dejavu-core), else Pillow's own."""
    for path in FONT_FILES:
        if path.exists():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


def dark_image(side: int = 320, seed: int = 0) -> Image.Image:
    """A dim, noisy grey image like a CT or ultrasound background."""
    noise = np.random.default_rng(seed).normal(50, 15, (side, side)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(noise)


def drawn(image: Image.Image, lines: dict[tuple[int, int], str], size: int = 16) -> Image.Image:
    """``image`` with white text at each (x, y)."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    for position, text in lines.items():
        draw.text(position, text, fill=255 if out.mode == "L" else (255, 255, 255), font=font(size))
    return out


def kinds_of(found: BurnedInText) -> dict[str, TextKind | None]:
    return {word.text: word.kind for word in found.words}


def test_tesseract_reads_a_banner_with_the_patients_name_id_and_dates_and_classifies_each() -> None:
    image = drawn(
        dark_image(),
        {
            (8, 8): "KOWALCZYK AGNIESZKA",
            (8, 34): "MRN 7730412",
            (8, 60): "DOB 23.09.1958",
            (200, 290): "17 Mar 2026",
            (290, 150): "L",
        },
    )
    found = find_burned_in_text(image, names=[PATIENT, "Okonkwo^Chidi"], identifiers=["MRN-7730412"])
    kinds = kinds_of(found)
    assert kinds["KOWALCZYK"] is TextKind.NAME and kinds["AGNIESZKA"] is TextKind.NAME
    assert kinds["7730412"] is TextKind.ID
    assert kinds["23.09.1958"] is TextKind.DATE
    assert kinds["17"] is kinds["Mar"] is kinds["2026"] is TextKind.DATE  # a written date spans three words
    assert kinds.get("MRN") is None and kinds.get("DOB") is None
    assert found.kinds == (TextKind.NAME, TextKind.ID, TextKind.DATE)
    assert all(word.box.right <= 320 and word.box.bottom <= 320 for word in found.words)  # original pixels
    assert found.seconds > 0


def test_without_the_header_names_labels_and_dicom_person_names_give_the_names_away() -> None:
    image = drawn(
        dark_image(seed=1),
        {(8, 8): "Patient: Jane Doe", (8, 60): "SMITH^JOHN", (8, 120): "Acc A12B3456", (8, 180): "12-MAR-2024"},
    )
    kinds = kinds_of(find_burned_in_text(image))
    names = {text for text, kind in kinds.items() if kind is TextKind.NAME}
    assert {"Jane", "Doe"} <= names
    assert any("SMITH" in text for text in names) and any("JOHN" in text for text in names)
    assert kinds["A12B3456"] is TextKind.ID
    assert kinds["12-MAR-2024"] is TextKind.DATE
    assert kinds.get("Patient:") is None and kinds.get("Acc") is None


def test_clean_images_and_medical_markers_are_not_identifying() -> None:
    gradient = Image.fromarray(np.tile(np.linspace(0, 255, 256).astype(np.uint8), (256, 1)))
    noise = Image.fromarray(np.random.default_rng(5).integers(0, 256, (200, 200), dtype=np.uint8))
    markers = drawn(dark_image(256, seed=2), {(230, 120): "L", (8, 8): "1 lung", (8, 230): "W 400 L 40", (180, 8): "R"})
    for image in (gradient, noise, markers):
        assert find_burned_in_text(image).identifying == ()
    assert {"lung", "400"} <= {word.text for word in find_burned_in_text(markers).words}  # read, and let through


def test_redaction_blacks_out_the_identifying_words_and_keeps_the_rest() -> None:
    image = drawn(dark_image(seed=3), {(8, 8): "Name: DOE^JANE", (8, 280): "ID 55501234", (150, 150): "lung"})
    found = find_burned_in_text(image)
    assert {TextKind.NAME, TextKind.ID} <= set(found.kinds)
    before = np.asarray(image).copy()
    redacted = redact(image, found.identifying)
    assert isinstance(redacted, Image.Image) and redacted.size == image.size and redacted.mode == image.mode
    assert np.array_equal(np.asarray(image), before)  # the original is not changed
    pixels = np.asarray(redacted)
    for word in found.identifying:
        assert (pixels[word.box.top : word.box.bottom, word.box.left : word.box.right] == 0).all()
    again = find_burned_in_text(redacted)
    assert again.identifying == ()
    assert "lung" in {word.text for word in again.words}

    rgb = np.asarray(image.convert("RGB"))  # the model image's own form: read-only uint8 RGB
    rgb.setflags(write=False)
    from_array = redact(rgb, found.identifying)
    assert isinstance(from_array, np.ndarray) and from_array.shape == rgb.shape and from_array.flags.writeable
    assert find_burned_in_text(from_array).identifying == ()


def test_small_text_in_a_model_sized_image_is_read() -> None:
    image = drawn(Image.new("RGB", (256, 256)), {(4, 4): "DOE^JANE 7730412", (4, 236): "12/03/2024"}, size=10)
    found = find_burned_in_text(np.asarray(image), names=["Doe^Jane"])
    assert set(found.kinds) == {TextKind.NAME, TextKind.ID, TextKind.DATE}


def word(text: str, line: int = 1, left: int = 0) -> OcrWord:
    return OcrWord(text, Box(left, 10 * line, 10, 8), 90.0, (line, 1, 1))


def test_classification_rules() -> None:
    words = [
        word("Kowa1czyk", 1),  # one OCR slip in a known name
        word("Pt", 2),
        word("Name:", 2, 20),
        word("O'Brien,", 2, 40),
        word("Mary", 2, 60),
        word("Study", 2, 80),
        word("Name:SMITH", 3),
        word("March", 4),
        word("1,", 4, 20),
        word("2024", 4, 40),
        word("AB12", 5),  # a known id with two digits
        word("CT", 6),
        word("120kV", 6, 20),
        word("3/40", 6, 40),
        word("Lung", 6, 60),
    ]
    kinds = [w.kind for w in classify(words, names=[PATIENT], identifiers=["ab-12"])]
    name, date, id_ = TextKind.NAME, TextKind.DATE, TextKind.ID
    assert kinds == [name, None, None, name, name, name, name, date, date, date, id_, None, None, None, None]
    assert [w.kind for w in classify(words[:1])] == [None]  # no header names: no fuzzy match
    assert classify([word("Kowalczyk-Nowak")], names=["KOWALCZYK^A"])[0].kind is name
    assert classify([word("AB12")])[0].kind is None
    measures = [word(text, 7, 20 * n) for n, text in enumerate(["W:1500", "WL=-600", "1500mm", "12.75MHz", "1500"])]
    assert [w.kind for w in classify(measures)] == [None, None, None, None, id_]  # a bare number stays an id


def test_values_validate_themselves_and_never_show_the_text() -> None:
    with pytest.raises(ValueError, match="inside"):
        Box(-1, 0, 4, 4)
    with pytest.raises(ValueError, match="positive"):
        Box(0, 0, 0, 4)
    with pytest.raises(ValueError, match="text"):
        OcrWord("  ", Box(0, 0, 1, 1), 50.0)
    with pytest.raises(ValueError, match="confidence"):
        OcrWord("x", Box(0, 0, 1, 1), 101.0)
    with pytest.raises(ValueError, match="kind"):
        OcrWord("x", Box(0, 0, 1, 1), 1.0, kind="name")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seconds"):
        BurnedInText((), -1.0)
    secret = OcrWord("Kowalczyk", Box(0, 0, 1, 1), 50.0, kind=TextKind.NAME)
    assert "Kowalczyk" not in repr(secret) and "Kowalczyk" not in repr(BurnedInText((secret,)))
    assert Box(3, 5, 7, 9).shrunk(2) == Box(1, 2, 4, 5)
    with pytest.raises(ValueError, match="languages"):
        read_words(dark_image(32), languages="eng; rm -rf /")
    with pytest.raises(ValueError, match="uint8"):
        read_words(np.zeros((8, 8), dtype=np.float32))


def test_tesseract_missing_failing_or_slow_is_ocr_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    image = drawn(dark_image(64), {(4, 4): "1234"})
    with pytest.raises(OcrUnavailable, match="failed"):
        read_words(image, languages="xxx")  # no such traineddata
    with pytest.raises(OcrUnavailable, match="did not finish"):
        read_words(dark_image(640), timeout=0.001)
    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", "/nonexistent/tesseract")
    with pytest.raises(OcrUnavailable, match="not installed"):
        read_words(image)
