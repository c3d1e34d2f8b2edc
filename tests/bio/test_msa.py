"""MSA ingestion: a3m, aligned FASTA, Stockholm, CSV; validation errors name row/column."""

from __future__ import annotations

import numpy as np
import pytest

from plmserve.bio.msa import MSA, encode_aligned, parse_msa, read_msa, sniff_format
from plmserve.errors import InvalidInputError
from tests.conftest import shared_path

BLAT = shared_path("data", "BLAT_ECOLX_ColabFold_2202.a3m")


def test_blat_a3m_parses_with_documented_counts():
    msa = read_msa(BLAT)
    assert msa.format == "a3m"
    assert len(msa) == 4501
    assert msa.num_columns == 286
    assert msa.names[0] == "101"
    assert msa.names[1] == "UPI0004437F73"  # first word of the tab-separated ColabFold header
    assert len(msa.query) == 286 and "-" not in msa.query
    assert all(len(r) == 286 for r in msa.aligned)
    lengths = [len(s) for s in msa.sequences]
    assert (min(lengths), max(lengths)) == (39, 357)
    assert sum(n + 2 for n in lengths) == 1_216_078  # data/README.md token count
    m = msa.aligned_matrix()
    assert m.shape == (4501, 286) and m.dtype == np.uint8
    assert int((m == 23).sum()) == 34  # the 34 X residues


def test_a3m_insertions_removed_from_aligned_kept_in_sequences():
    text = ">q desc\nACDEF\n>h1\nAcC-EF..\n>h2\n-CDkkEF\n"
    msa = parse_msa(text)
    assert msa.format == "a3m"
    assert msa.names == ["q", "h1", "h2"]
    assert msa.aligned == ["ACDEF", "AC-EF", "-CDEF"]
    assert msa.sequences == ["ACDEF", "ACCEF", "CDKKEF"]
    assert msa.query == "ACDEF"
    round_trip = parse_msa(msa.to_a3m())
    assert round_trip.aligned == msa.aligned and round_trip.sequences == msa.sequences


def test_aligned_fasta_and_dots_as_gaps():
    msa = parse_msa(b">a\nAC-DE\n>b\nA.CDE\n")
    assert msa.format == "fasta"
    assert msa.aligned == ["AC-DE", "A-CDE"]
    assert msa.sequences == ["ACDE", "ACDE"]


def test_stockholm_read_with_easel():
    text = "# STOCKHOLM 1.0\nq   ACD..EF\nh1  AC-kkEF\n\nq   GH\nh1  G-\n//\n"
    msa = parse_msa(text)
    assert msa.format == "stockholm"
    assert msa.names == ["q", "h1"]
    assert msa.aligned == ["ACDEFGH", "AC-EFG-"]
    assert msa.sequences == ["ACDEFGH", "ACKKEFG"]


def test_stockholm_malformed_is_invalid_input():
    with pytest.raises(InvalidInputError, match="Stockholm"):
        parse_msa("# STOCKHOLM 1.0\nq ACD\nh AC\n//\n")


@pytest.mark.parametrize(
    "text,names",
    [
        ("ACDE\nAC-E\n", ["sequence-1", "sequence-2"]),
        ("q,ACDE\nh,AC-E\n", ["q", "h"]),
        ("name,sequence\nq,ACDE\nh,AC-E\n", ["q", "h"]),
    ],
)
def test_headerless_csv_one_or_two_columns(text, names):
    msa = parse_msa(text)
    assert msa.format == "csv"
    assert msa.names == names
    assert msa.aligned == ["ACDE", "AC-E"]


def test_single_bare_sequence_is_a_valid_msa():
    msa = parse_msa("MKTAYIAK")
    assert len(msa) == 1 and msa.query == "MKTAYIAK"


def test_sniff_format():
    assert sniff_format("# STOCKHOLM 1.0\n") == "stockholm"
    assert sniff_format("\n>a\nACd\n") == "a3m"
    assert sniff_format(">a\nAC-\n") == "fasta"
    assert sniff_format("a,ACD\n") == "csv"


def test_unequal_row_names_row_and_column_counts():
    rows = ">q\nACDEF\n" + "".join(f">h{i}\nACDEF\n" for i in range(2, 17)) + ">UPI00ABC\nACDEFG\n"
    with pytest.raises(InvalidInputError) as err:
        parse_msa(rows, source="x.a3m")
    assert "row 17 `UPI00ABC` has 6 columns, the query has 5" in str(err.value)
    assert err.value.item == 16


def test_invalid_character_names_row_column_character():
    with pytest.raises(InvalidInputError) as err:
        parse_msa(">q\nACDEF\n>h\nAC*EF\n")
    msg = str(err.value)
    assert "row 2 `h`, column 3" in msg and "'*'" in msg
    assert (err.value.item, err.value.position, err.value.character) == (1, 3, "*")
    with pytest.raises(InvalidInputError, match=r"row 1 `sequence-1`, column 2: invalid character 'J'"):
        parse_msa("AJDE\n")


@pytest.mark.parametrize("data", ["", "   \n\n", b""])
def test_empty_file(data):
    with pytest.raises(InvalidInputError, match="empty"):
        parse_msa(data)


def test_not_utf8_and_bad_csv():
    with pytest.raises(InvalidInputError, match="not UTF-8"):
        parse_msa(b"\xff\xfe\x00A")
    with pytest.raises(InvalidInputError, match="line 2: 3 comma-separated fields"):
        parse_msa("a,ACD\nb,ACD,x\n")
    with pytest.raises(InvalidInputError, match="line 2: 1 fields, but the first row has 2"):
        parse_msa("a,ACD\nACD\n")
    with pytest.raises(InvalidInputError, match="line 1: sequence data before the first"):
        parse_msa("ACD\n>a\nACD\n", "fasta")


def test_all_gap_row_rejected():
    with pytest.raises(InvalidInputError, match="row 2 `h` has no residues"):
        parse_msa(">q\nACD\n>h\n---\n")


def test_duplicate_names_made_unique_deterministically():
    msa = parse_msa(">a\nACD\n>a\nACD\n>a_2\nACD\n>a\nACD\n")
    assert msa.names == ["a", "a_2", "a_2_2", "a_3"]
    assert len(set(msa.names)) == 4


def test_encode_alphabet_matches_poet():
    m = encode_aligned(["ARNDCQEGHILKMFPSTWYV", "-XBZUO" + "A" * 14])
    assert list(m[0]) == list(range(20))
    assert list(m[1][:6]) == [20, 23, 23, 23, 4, 11]


def test_subset_and_csv_output():
    msa = parse_msa(">q\nACD\n>h\nAcC-\n")
    sub = msa.subset([1])
    assert sub.names == ["h"] and sub.sequences == ["ACC"]
    assert msa.to_csv() == "q,ACD\nh,AC-\n"
    assert msa.to_csv(aligned=False) == "q,ACD\nh,ACC\n"
    assert isinstance(sub, MSA)
