"""Card fields copied from the source's README and from reports never reach the card raw:
Hub license ids only (else `other`, linked by https only), ISO 639 language codes, and no
HTML or links from inputs in the Markdown body (issue 22, item 4d)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from export.publish.cards import cell, render_card, source_record
from tests.export.test_cards import EVALUATION, GGUF_REPORT, make_card

HOSTILE = "<script>alert(1)</script> [click](javascript:alert(1)) &amp;"


def _source(tmp_path: Path, front_matter: str) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "README.md").write_text(f"---\n{front_matter}---\n# card\n")
    return src


@pytest.mark.parametrize(
    "front_matter, license, name, link",
    [
        ("license: mit\n", "mit", None, None),
        ("license: llama3.2\n", "llama3.2", None, None),
        (
            "license: acme-research\nlicense_link: https://acme.example/license\n",
            "other",
            "acme-research",
            "https://acme.example/license",
        ),
        (
            'license: "<script>x</script>"\nlicense_link: "javascript:alert(1)"\n',
            "other",
            None,
            None,
        ),
        ("license: other\nlicense_name: acme\nlicense_link: LICENSE\n", "other", "acme", None),
        ("license: Apache 2.0\n", "other", None, None),
    ],
)
def test_license_is_a_hub_id_or_other(
    tmp_path: Path, front_matter: str, license: str, name: str | None, link: str | None
) -> None:
    rec = source_record(_source(tmp_path, front_matter), None, "acme/x")
    assert (rec.license, rec.license_name, rec.license_link) == (license, name, link)


def test_languages_are_iso_codes(tmp_path: Path) -> None:
    front = 'language:\n- en\n- pt-BR\n- fil\n- zh-Hant\n- "<b>x</b>"\n- English\n- e\n'
    rec = source_record(_source(tmp_path, front), None, "acme/x")
    assert rec.language == ["en", "pt-BR", "fil", "zh-Hant"]
    assert any("not ISO 639 codes" in w for w in rec.warnings)


def test_cell_escapes_html_links_pipes_and_lines() -> None:
    assert cell("a|b\nc") == "a\\|b c"
    assert cell("<b> &amp; <= 0.01 & x") == "&lt;b> &amp;amp; <= 0.01 & x"
    assert cell("[x](javascript:y)") == "\\[x\\](javascript:y)"


def test_report_strings_reach_the_card_escaped(tmp_path: Path) -> None:
    evaluation = dataclasses.replace(
        EVALUATION,
        judge=HOSTILE,
        decoding=HOSTILE,
        sets={HOSTILE: next(iter(EVALUATION.sets.values()))},
    )
    card = make_card(tmp_path / "a", evaluation=evaluation)
    check = dataclasses.replace(GGUF_REPORT.checks[0], name=HOSTILE, detail=HOSTILE)
    gguf_report = dataclasses.replace(GGUF_REPORT, checks=[check])
    gguf = make_card(
        tmp_path / "b",
        kind="gguf",
        route="control-vector",
        control_vector="cv.gguf",
        gguf_verify={"m.gguf": gguf_report},
        gguf_notes=[HOSTILE],
    )
    for text in (render_card(card), render_card(gguf)):
        assert "<script" not in text and "[click](" not in text and "&amp;amp;" in text
