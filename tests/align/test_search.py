"""Homology search on real data: planted BLAT homologs among an unrelated bacterial proteome."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from plmserve.align import create_msa
from plmserve.align.search import _query_relative_a3m, clean_seed, mmseqs_binary
from plmserve.bio.msa import read_msa
from plmserve.errors import InvalidInputError, InvalidParameterError, MissingParameterError, NotFoundError
from tests.conftest import shared_path

DECOYS = shared_path("data", "decoy_proteome_938293.faa")


@lru_cache(maxsize=1)
def blat():
    return read_msa(shared_path("data", "BLAT_ECOLX_ColabFold_2202.a3m"))


def write_database(path: Path, n_planted: int, n_decoys: int | None = None, seed: int = 20261121) -> set[str]:
    """FASTA of ``n_planted`` ungapped BLAT homologs (rows 1.. of the a3m, drawn with ``seed``)
    followed by the decoy proteome (first ``n_decoys`` records, all when None)."""
    msa = blat()
    rows = np.random.default_rng(seed).choice(np.arange(1, len(msa)), n_planted, replace=False)
    planted = {f"planted_{int(i)}" for i in rows}
    decoys = DECOYS.read_text()
    if n_decoys is not None:
        records = decoys.split(">")[1 : n_decoys + 1]
        decoys = "".join(">" + r for r in records)
    with path.open("w") as fh:
        for i in sorted(int(i) for i in rows):
            fh.write(f">planted_{i}\n{msa.sequences[i]}\n")
        fh.write(decoys)
    return planted


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    path = tmp_path_factory.mktemp("db") / "proteins.fasta"
    planted = write_database(path, 500)
    return path, planted


def test_pyhmmer_recovers_planted_homologs_and_no_decoy(database, tmp_path):
    path, planted = database
    stages = []
    msa = create_msa(blat().query, database=path, cache_dir=tmp_path, progress=lambda s, f: stages.append((s, f)))
    hits = msa.names[1:]
    found = planted & set(hits)
    assert len(found) >= 0.95 * len(planted)
    assert set(hits) <= planted, f"decoys reported: {sorted(set(hits) - planted)}"
    # a3m aligned to the query: query first and ungapped, every row has the query's columns
    assert msa.names[0] == "seed" and msa.query == blat().query and msa.aligned[0] == blat().query
    assert all(len(r) == 286 for r in msa.aligned)
    # each hit's full sequence (insertions kept) is the planted sequence (or a fragment of it)
    for name, seq in zip(msa.names[1:], msa.sequences[1:]):
        assert seq in blat().sequences[int(name.split("_")[1])]
    assert stages and stages[-1] == ("done", 1.0)
    assert all(0.0 <= f <= 1.0 for _, f in stages)


def test_cache_returns_identical_msa_without_searching(database, tmp_path, monkeypatch):
    path, _ = database
    first = create_msa(blat().query[:150], database=path, cache_dir=tmp_path, max_hits=20)
    assert len(first) == 21
    assert len(list(tmp_path.glob("*.a3m"))) == 1
    import plmserve.align.search as search

    def boom(*a, **k):
        raise AssertionError("searched again")

    monkeypatch.setattr(search, "_search_pyhmmer", boom)
    stages = []
    second = create_msa(blat().query[:150], database=path, cache_dir=tmp_path, max_hits=20,
                        progress=lambda s, f: stages.append(s))
    assert second.to_a3m() == first.to_a3m()
    assert stages == ["cached"]
    # another parameter is another key
    with pytest.raises(AssertionError, match="searched again"):
        create_msa(blat().query[:150], database=path, cache_dir=tmp_path, max_hits=21)


def test_more_iterations_find_every_planted_homolog(database, tmp_path):
    path, planted = database
    msa = create_msa(blat().query, database=path, cache_dir=tmp_path, iterations=2)
    assert planted <= set(msa.names[1:])


def test_query_relative_a3m_handles_query_deletions_and_trimmed_flanks():
    # HMM columns: match(upper/-) and insert(lower/.) ; the query lost residue 'M' (trimmed
    # N-terminal flank) and has a deletion in the second match column
    rows = ["A-CdE", "AGC.E", "-GCkE"]
    text = _query_relative_a3m(["q", "h1", "h2"], rows, "MACDE")
    lines = text.splitlines()
    assert lines[1] == "MACDE"
    assert lines[3] == "-AgC-E"
    assert lines[5] == "--gCKE"


def test_database_from_settings(tmp_path, monkeypatch):
    db = tmp_path / "env.fasta"
    db.write_text(f">hom\n{blat().sequences[1]}\n")
    monkeypatch.setenv("PLMSERVE_MSA_DATABASE", str(db))
    msa = create_msa(blat().query, cache_dir=tmp_path)
    assert msa.names == ["seed", "hom"]


def test_search_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("PLMSERVE_MSA_DATABASE", raising=False)
    with pytest.raises(MissingParameterError, match="no sequence database"):
        create_msa("MKTAYIAK", cache_dir=tmp_path)
    with pytest.raises(NotFoundError, match="not found"):
        create_msa("MKTAYIAK", database=tmp_path / "nope.fasta", cache_dir=tmp_path)
    db = tmp_path / "db.fasta"
    db.write_text(">a\nMKTAYIAK\n")
    with pytest.raises(InvalidParameterError, match="unknown search backend"):
        create_msa("MKTAYIAK", database=db, backend="blast", cache_dir=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="iterations"):
        create_msa("MKTAYIAK", database=db, iterations=0, cache_dir=tmp_path)
    with pytest.raises(InvalidParameterError, match="evalue"):
        create_msa("MKTAYIAK", database=db, evalue=0, cache_dir=tmp_path)
    with pytest.raises(InvalidInputError, match="position 3: invalid character '1'"):
        create_msa("MK1TAYIAK", database=db, cache_dir=tmp_path)
    with pytest.raises(InvalidInputError, match="empty"):
        clean_seed("  \n")
    assert clean_seed(">seed\nmkt ay\n>other\nWW\n") == "MKTAY"


@pytest.mark.skipif(mmseqs_binary() is None, reason="MMseqs2 binary not installed (apt-get install mmseqs2)")
def test_mmseqs_backend_finds_planted_homologs(tmp_path):
    path = tmp_path / "small.fasta"
    planted = write_database(path, 60, n_decoys=300, seed=7)
    msa = create_msa(blat().query, database=path, backend="mmseqs", cache_dir=tmp_path, threads=2)
    hits = set(msa.names[1:])
    assert msa.names[0] == "seed" and msa.aligned[0] == blat().query
    assert len(hits & planted) >= 0.9 * len(planted)
    assert hits <= planted
    assert all(len(r) == 286 for r in msa.aligned)


def test_mmseqs_missing_binary_is_a_clear_error(tmp_path, monkeypatch):
    import plmserve.align.search as search

    monkeypatch.setattr(search, "mmseqs_binary", lambda: None)
    db = tmp_path / "db.fasta"
    db.write_text(">a\nMKTAYIAK\n")
    with pytest.raises(InvalidParameterError, match="apt-get install mmseqs2"):
        create_msa("MKTAYIAK", database=db, backend="mmseqs", cache_dir=tmp_path)
