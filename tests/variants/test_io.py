"""Reading variant files: ProteinGym DMS CSVs, FASTA, mutation lists; errors name file and line."""

from __future__ import annotations

import pandas as pd
import pytest

from plmserve.bio.msa import read_msa
from plmserve.errors import InvalidInputError
from plmserve.variants.io import read_named_sequences, read_variants, read_wild_type
from tests.conftest import shared_path

WT = "MKTAYIAKQRQISFVKSHFSRQ"
JACQUIER = shared_path("data", "BLAT_ECOLX_Jacquier_2013.csv")


def test_jacquier_dms_wild_type_inferred_and_columns_kept():
    v = read_variants(JACQUIER)
    dms = pd.read_csv(JACQUIER)
    assert len(v) == 989
    assert v.mutants == dms["mutant"].tolist()
    assert v.sequences == dms["mutated_sequence"].tolist()
    assert v.wild_type == read_msa(shared_path("data", "BLAT_ECOLX_ColabFold_2202.a3m")).query
    assert list(v.extra.columns) == ["DMS_score", "DMS_score_bin"]
    assert v.extra["DMS_score"].tolist() == dms["DMS_score"].tolist()
    assert set(v.depths) == {1}


def test_multi_mutants_wt_row_and_missing_sequence(tmp_path):
    p = tmp_path / "dms.csv"
    p.write_text("mutant,DMS_score,assay\nM1A:K2R,0.5,x\nWT,0.0,x\nt3p,-1.0,x\n")
    v = read_variants(p, WT)
    assert v.mutants == ["M1A:K2R", "WT", "T3P"]
    assert v.sequences[0] == "AR" + WT[2:] and v.sequences[1] == WT and v.sequences[2][2] == "P"
    assert v.depths == [2, 0, 1]
    assert v.extra["assay"].tolist() == ["x", "x", "x"]


@pytest.mark.parametrize("alias", ["X0X", "input", "wt", "wild_type"])
def test_wild_type_aliases_become_WT(tmp_path, alias):
    p = tmp_path / "m.txt"
    p.write_text(f"# comment\n{alias}\nM1A\n")
    assert read_variants(p, WT).mutants == ["WT", "M1A"]


def test_mutated_sequence_must_match_code(tmp_path):
    p = tmp_path / "dms.csv"
    p.write_text(f"mutant,mutated_sequence\nM1A,{'A' + WT[1:]}\nK2R,{'M' + 'Q' + WT[2:]}\n")
    with pytest.raises(InvalidInputError, match=r"dms.csv: line 3: mutant 'K2R' .* does not give its mutated_sequence"):
        read_variants(p, WT)


def test_wrong_wild_type_residue_names_the_line(tmp_path):
    p = tmp_path / "dms.csv"
    p.write_text("mutant\nM1A\nA2G\n")
    with pytest.raises(InvalidInputError, match=r"line 3: .*'A2G'.*has 'K' at position 2"):
        read_variants(p, WT)


def test_list_without_wild_type_is_refused(tmp_path):
    p = tmp_path / "m.txt"
    p.write_text("M1A\n")
    with pytest.raises(InvalidInputError, match="--wt"):
        read_variants(p)


def test_fasta_codes_from_names_or_differences(tmp_path):
    p = tmp_path / "v.fasta"
    p.write_text(f">M1A\nA{WT[1:]}\n>some_name\n{WT[:4]}G{WT[5:]}\n>WT\n{WT}\n>longer\n{WT}GG\n")
    v = read_variants(p, WT)
    assert v.mutants == ["M1A", "Y5G", "WT", "longer"]
    assert v.substitutions[3] is None and v.depths[:3] == [1, 1, 0]
    assert v.extra["name"].tolist() == ["M1A", "some_name", "WT", "longer"]


def test_jacquier_fasta_matches_csv():
    v = read_variants(shared_path("data", "BLAT_ECOLX_Jacquier_2013_variants.fasta"), read_variants(JACQUIER).wild_type)
    assert v.mutants == pd.read_csv(JACQUIER)["mutant"].tolist()


def test_read_wild_type(tmp_path):
    (tmp_path / "wt.fasta").write_text(f">wt desc\n{WT[:10]}\n{WT[10:].lower()}\n")
    assert read_wild_type(tmp_path / "wt.fasta") == WT
    (tmp_path / "two.fasta").write_text(">a\nMK\n>b\nMK\n")
    with pytest.raises(InvalidInputError, match="one wild-type record, found 2"):
        read_wild_type(tmp_path / "two.fasta")


def test_named_sequences_for_poet_score(tmp_path):
    pairs = read_named_sequences(JACQUIER)
    assert len(pairs) == 989 and pairs[0][0] == "H24Y" and len(pairs[0][1]) == 286
    p = tmp_path / "plain.csv"
    p.write_text("a,MKT\nb,MKA\n")
    assert read_named_sequences(p) is None  # headerless: the caller's own format


def test_display_code_names_the_wild_type_WT():
    from plmserve.bio.mutations import display_code

    assert [display_code(c) for c in ("X0X", "input", "WT", "A1R", "A1R:K2G")] == ["WT", "WT", "WT", "A1R", "A1R:K2G"]
