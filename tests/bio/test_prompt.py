"""Prompt files: <END_PROMPT>-separated FASTA or CSV blocks."""

from __future__ import annotations

import pytest

from plmserve.bio.prompt import format_prompt, parse_prompt, read_prompt
from plmserve.errors import InvalidInputError


def test_csv_blocks_like_the_sdk_docstring():
    reps = parse_prompt("MKTA\nMKTV\n<END_PROMPT>\nGGGA\nGGGC\n")
    assert [[s for _, s in r] for r in reps] == [["MKTA", "MKTV"], ["GGGA", "GGGC"]]


def test_two_replicates_csv_and_fasta():
    text = "MKT\nAAV\n<END_PROMPT>\n>x desc\nmkl\nQ\n>y\nWW\n<END_PROMPT>\n\n"
    reps = parse_prompt(text)
    assert reps == [
        [("sequence-1", "MKT"), ("sequence-2", "AAV")],
        [("x", "MKLQ"), ("y", "WW")],
    ]


def test_empty_blocks_ignored_and_bare_sequence():
    assert parse_prompt("<END_PROMPT>\n\n<END_PROMPT>\nn1,ACD\n<END_PROMPT>\n") == [[("n1", "ACD")]]
    assert parse_prompt(b"MKTAYIAK") == [[("sequence-1", "MKTAYIAK")]]


@pytest.mark.parametrize("fmt", ["fasta", "csv"])
def test_format_round_trip(tmp_path, fmt):
    reps = [[("a", "ACD"), ("b", "EFG")], [("c", "HIK")]]
    text = format_prompt(reps, fmt)
    assert text.count("<END_PROMPT>") == 1
    path = tmp_path / "p.txt"
    path.write_text(text)
    assert read_prompt(path) == reps


def test_errors_name_prompt_sequence_position():
    with pytest.raises(InvalidInputError, match=r"prompt 2, sequence 1 `sequence-1`, position 3: a gap"):
        parse_prompt("ACD\n<END_PROMPT>\nAC-D\n")
    with pytest.raises(InvalidInputError, match=r"prompt 1, sequence 2 `b`, position 2: invalid character '1'"):
        parse_prompt(">a\nACD\n>b\nA1\n")
    with pytest.raises(InvalidInputError, match="no sequences"):
        parse_prompt("\n<END_PROMPT>\n")
    with pytest.raises(InvalidInputError, match="3 comma-separated fields"):
        parse_prompt("a,ACD,x\n")
    with pytest.raises(InvalidInputError, match="empty sequence"):
        parse_prompt(">a\n>b\nACD\n")
