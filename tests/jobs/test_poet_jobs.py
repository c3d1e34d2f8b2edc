"""Pure helpers of the PoET job types: variant-file parsing, server-assigned names, single-site codes."""

from __future__ import annotations

import pytest

from plmserve.errors import InvalidInputError
from plmserve.jobs.poet import parse_prompt_file, parse_sequence_list, score_names, single_site_codes


def test_parse_sequence_list_sniffs_fasta_and_csv():
    assert parse_sequence_list(b">a desc\nMKT\nAY\n>b\nmkv\n") == [("a", "MKTAY"), ("b", "MKV")]
    assert parse_sequence_list("MKT\n\nMKV\n", default_name=None) == [(None, "MKT"), (None, "MKV")]
    assert parse_sequence_list("x,MKT\nMKV\n") == [("x", "MKT"), ("sequence-2", "MKV")]
    assert parse_sequence_list("\ufeffMKT\r\n") == [("sequence-1", "MKT")]


@pytest.mark.parametrize("data, message", [
    (b"", "no sequences (the file is empty)"),
    (b"\xff\xfe", "not a text file"),
    (b"a,b,MKT\n", "line 1: expected 1 (sequence) or 2 (name,sequence) CSV fields, got 3"),
    (b"MKT\nMK-T\n", "row 2: invalid character '-' at position 3 (gaps are not allowed here)"),
    (b">a\nMKT\n>b\nMK1\n", "row 2: invalid character '1' at position 3"),
])
def test_parse_sequence_list_errors_say_where(data, message):
    with pytest.raises(InvalidInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_sequence_list(data, source="variant_file")


def test_parse_prompt_file_blocks():
    reps = parse_prompt_file(b">a\nMKT\n<END_PROMPT>\nMKV\nMKW\n<END_PROMPT>\n")
    assert [[s for _, s in r] for r in reps] == [["MKT"], ["MKV", "MKW"]]


def test_score_names_are_zero_padded_to_the_count():
    assert score_names(3) == ["sequence-1", "sequence-2", "sequence-3"]
    assert score_names(15)[0] == "sequence-01" and score_names(15)[-1] == "sequence-15"
    assert score_names(100)[0] == "sequence-001"


def test_single_site_codes_order():
    codes = single_site_codes("MA")
    assert codes[0] == "X0X" and len(codes) == 1 + 19 * 2
    assert codes[1:20] == [f"M1{aa}" for aa in "ARNDCQEGHILKFPSTWYV"]
    assert codes[20:] == [f"A2{aa}" for aa in "RNDCQEGHILKMFPSTWYV"]
