"""CSV uploads with any line ending, and unreadable CSV, are 4xx errors naming the source, never 500s
(schemathesis found ``\\r\\x14`` in an MSA upload raising ``_csv.Error``)."""

import pytest

from plmserve.bio.fasta import csv_rows
from plmserve.bio.msa import parse_msa
from plmserve.errors import InvalidInputError
from plmserve.jobs.poet import parse_sequence_list


def test_bare_carriage_returns_are_line_endings():
    assert csv_rows("a,MKT\rb,MKV\r", "up.csv") == [["a", "MKT"], ["b", "MKV"]]
    assert parse_sequence_list(b"s1,MKT\rs2,MKV\r\n", source="msa_file") == [("s1", "MKT"), ("s2", "MKV")]


def test_control_characters_are_an_invalid_input_error():
    with pytest.raises(InvalidInputError, match="msa_file"):
        parse_sequence_list(b"\r\x14", source="msa_file")


def test_oversized_field_names_source_and_line():
    with pytest.raises(InvalidInputError, match=r"big\.csv: line 2: not readable as CSV"):
        csv_rows("a,MKT\n" + "b," + "A" * 200_000 + "\n", "big.csv")


def test_msa_csv_with_carriage_returns_parses():
    msa = parse_msa("q,MKT-\rh,MKV-\r", format="csv", source="m.csv")
    assert len(msa.names) == 2
