"""ESM-2 and ESM C commands: ``plmserve encode``, ``plmserve predict``, ``plmserve score-variants``.

They call the same engine as the HTTP server (``plmserve.models.esm2``), load weights through the
same registry (``--model-dir`` / ``PLMSERVE_MODEL_DIR``, HF hub cache, fair-esm ``.pt`` files)
and write BioLM-shaped outputs:

    plmserve encode -m esm2-8m proteins.fasta -o emb.npz --include mean,contacts --repr-layers -1
    plmserve predict -m esm2-8m --sequence 'MKT<mask>YIAKQR'
    plmserve score-variants -m esm2-650m --wt-fasta wt.fasta variants.csv -o scored.csv
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import typer

from plmserve.cli._common import cli_errors, console, progress
from plmserve.errors import InvalidInputError, InvalidParameterError

ENCODE_FORMATS = (".npz", ".parquet", ".jsonl")
PREDICT_FORMATS = (".jsonl", ".json")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


#: model families these commands serve (same engine interface: encode, predict, log_prob, score_mutants)
ENGINE_FAMILIES = ("esm2", "esmc")


def engine_spec(model: str) -> Any:
    """The registry entry of an ESM-2 or ESM C model.

    Raises:
        ModelNotFoundError: unknown name, or a model of another family (the message lists the served ones).
    """
    from plmserve.errors import ModelNotFoundError
    from plmserve.models.registry import get_spec, list_models

    spec = get_spec(model)
    if spec.family not in ENGINE_FAMILIES:
        known = ", ".join(m.slug for m in list_models() if m.family in ENGINE_FAMILIES)
        raise ModelNotFoundError(f"model '{model}' is a {spec.family} model; this command serves: {known}")
    return spec


def load_engine(model: str, load_format: str | None, model_dir: Path | None) -> Any:
    """The ESM-2 or ESM C engine for ``model`` (slug or alias), loaded as the server would load it.

    Raises:
        ModelNotFoundError: unknown model name.
        WeightsNotFoundError / ModelLoadError: no weights found / weights unusable.
        InvalidParameterError: ``load_format`` not ``auto`` or ``dummy``.
    """
    from plmserve.models.registry import ModelManager
    from plmserve.settings import get_settings

    if load_format is not None and load_format not in ("auto", "dummy"):
        raise InvalidParameterError(f"--load-format must be 'auto' or 'dummy', not '{load_format}'")
    spec = engine_spec(model)
    settings = get_settings(load_format=load_format, model_dir=model_dir)
    try:  # keep stderr to our own progress bar and one-line errors
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    with console.status(f"loading {model} ..."):
        engine = ModelManager(settings).get(model, family=spec.family)
    if getattr(engine, "load_format", None) == "dummy":
        console.print("[bold yellow]WARNING:[/] load-format=dummy: RANDOM weights, outputs are meaningless",
                      highlight=False)
    return engine


def read_inputs(fasta: Path | None, sequences: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """(names, sequences) from a FASTA file and/or ``--sequence`` values (named seq1, seq2 ...).

    Raises:
        InvalidInputError: no input at all, or a malformed FASTA file.
        FileNotFoundError: the FASTA file does not exist.
    """
    from plmserve.bio.fasta import read_fasta

    names: list[str] = []
    seqs: list[str] = []
    if fasta is not None:
        for rec in read_fasta(fasta):
            names.append(rec.name)
            seqs.append(rec.sequence)
    for i, s in enumerate(sequences or [], start=1):
        names.append(f"seq{i}")
        seqs.append(s)
    if not seqs:
        raise InvalidInputError("no input: give a FASTA file or --sequence SEQ")
    return names, seqs


def validate_named(engine: Any, names: list[str], seqs: list[str], *, allow_mask: bool,
                   source: str) -> list[str]:
    """``engine.validate`` with the error re-worded to name the FASTA record instead of an index."""
    try:
        return engine.validate(seqs, allow_mask=allow_mask)
    except InvalidInputError as exc:
        item = getattr(exc, "item", None)
        if item is None or not 0 <= item < len(names):
            raise
        raise InvalidInputError(f"{source}: record '{names[item]}' (#{item + 1}): {exc}",
                                item=item, position=exc.position, character=exc.character) from None


def _split_csv(value: str, what: str) -> list[str]:
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts:
        raise InvalidParameterError(f"{what} is empty")
    return parts


def parse_repr_layers(value: str) -> list[int]:
    """``"-1,0,3"`` -> ``[-1, 0, 3]``; raises :class:`InvalidParameterError` naming the bad part."""
    out = []
    for part in _split_csv(value, "--repr-layers"):
        try:
            out.append(int(part))
        except ValueError:
            raise InvalidParameterError(f"--repr-layers: '{part}' is not an integer layer index") from None
    return out


def _chunks(order: list[int], size: int) -> list[list[int]]:
    return [order[i:i + size] for i in range(0, len(order), size)]


def run_batched(fn, seqs: list[str], *, batch: int, label: str, **kwargs) -> list[Any]:
    """Call ``fn(list_of_sequences, **kwargs) -> list`` over length-sorted chunks of ``batch``
    sequences with a progress bar; results come back in input order."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    results: list[Any] = [None] * len(seqs)
    with progress(disable=None if len(seqs) > batch else True) as bar:
        task = bar.add_task(label, total=len(seqs))
        for idx in _chunks(order, batch):
            outs = fn([seqs[i] for i in idx], **kwargs)
            for i, out in zip(idx, outs):
                results[i] = out
            bar.advance(task, len(idx))
    return results


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _esmc_include(include: list[str]) -> list[str]:
    """``--include`` for ESM C (mean, per_token, bos, logits), duplicates removed.

    Raises:
        InvalidParameterError: an output ESM C does not have (contacts, attentions) or an unknown one.
    """
    from plmserve.models.esmc.engine import INCLUDE_KEYS

    out: list[str] = []
    for name in include:
        if name not in INCLUDE_KEYS:
            raise InvalidParameterError(f"--include: '{name}' is not available for ESM C; choose from "
                                        f"{', '.join(INCLUDE_KEYS)}")
        if name not in out:
            out.append(name)
    return out


# ---------------------------------------------------------------------------------------------
# encode writers
# ---------------------------------------------------------------------------------------------


def write_npz(path: Path, names: list[str], seqs: list[str], outs: list[dict], include: list[str]) -> None:
    """NumPy archive. Keys: ``names``, ``sequences`` (N,); ``mean_representations/<layer>`` and
    ``bos_representations/<layer>`` (N, dim) float32; ragged per sequence i:
    ``representations/<layer>/<i>`` (L_i, dim), ``contacts/<i>`` (L_i, L_i), ``logits/<i>``
    (L_i, 20), ``attentions/<i>`` (n_layers, L_i)."""
    arrays: dict[str, np.ndarray] = {"names": np.array(names, dtype=str), "sequences": np.array(seqs, dtype=str)}
    for inc, key in (("mean", "mean_representations"), ("bos", "bos_representations")):
        if inc in include:
            for layer in outs[0][key]:
                arrays[f"{key}/{int(layer)}"] = np.stack([_np(o[key][layer]) for o in outs])
    for i, o in enumerate(outs):
        if "per_token" in include:
            for layer, v in o["representations"].items():
                arrays[f"representations/{int(layer)}/{i}"] = _np(v)
        for key in ("contacts", "logits", "attentions"):
            if key in include:
                arrays[f"{key}/{i}"] = _np(o[key])
    np.savez_compressed(path, **arrays)


def write_parquet(path: Path, names: list[str], seqs: list[str], outs: list[dict], include: list[str]) -> None:
    """Parquet, one row per sequence: ``name``, ``sequence``, ``sequence_index``, then
    ``mean_<layer>`` / ``bos_<layer>`` (list<float32>), ``per_token_<layer>`` (list<list<float32>>),
    ``contacts`` / ``logits`` / ``attentions`` (list<list<float32>>)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols: dict[str, Any] = {"name": pa.array(names), "sequence": pa.array(seqs),
                            "sequence_index": pa.array(range(len(seqs)), pa.int32())}
    vec = pa.list_(pa.float32())
    mat = pa.list_(vec)
    for inc, key, prefix, typ in (("mean", "mean_representations", "mean", vec),
                                  ("bos", "bos_representations", "bos", vec),
                                  ("per_token", "representations", "per_token", mat)):
        if inc in include:
            for layer in outs[0][key]:
                cols[f"{prefix}_{int(layer)}"] = pa.array([_np(o[key][layer]).tolist() for o in outs], typ)
    for key in ("contacts", "logits", "attentions"):
        if key in include:
            cols[key] = pa.array([_np(o[key]).tolist() for o in outs], mat)
    pq.write_table(pa.table(cols), path)


def write_jsonl(path: Path, names: list[str], seqs: list[str], outs: list[dict], include: list[str]) -> None:
    """JSON lines, one per sequence: ``name``, ``sequence`` and the BioLM encode result object
    (``sequence_index``, ``mean_representations`` {"<layer>": [...]}, ...)."""
    from plmserve.api.biolm import encode_result_json

    with open(path, "w") as fh:
        for i, (name, seq, out) in enumerate(zip(names, seqs, outs)):
            row = {"name": name, "sequence": seq, **encode_result_json(i, out, include)}
            fh.write(json.dumps(row) + "\n")


_WRITERS = {".npz": write_npz, ".parquet": write_parquet, ".jsonl": write_jsonl}


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------

_MODEL_HELP = ("model slug or alias: esm2-8m, esm2-35m, esm2-150m, esm2-650m, esm2-3b, esm2-15b, "
               "esmc-300m, esmc-600m")
_LOAD_HELP = "auto: real weights; dummy: real architecture with RANDOM weights (smoke tests)"
_DIR_HELP = "directory with local weights: <dir>/<slug>/ (HF format) or fair-esm .pt files"


def register(app: typer.Typer) -> None:
    """Add ``encode``, ``predict`` and ``score-variants`` to the root CLI."""

    @app.command("encode")
    @cli_errors
    def encode(
        fasta: Optional[Path] = typer.Argument(None, help="FASTA file of protein sequences"),
        model: str = typer.Option("esm2-650m", "-m", "--model", help=_MODEL_HELP),
        output: Path = typer.Option(..., "-o", "--output", help="output file: .npz, .parquet or .jsonl"),
        include: str = typer.Option("mean", "--include",
                                    help="comma-separated: mean, per_token, bos, contacts, logits, attentions "
                                    "(ESM C: mean, per_token, bos, logits)"),
        repr_layers: str = typer.Option("-1", "--repr-layers",
                                        help="comma-separated layers (ESM-2: 0 = embeddings, -1 = last, after "
                                        "the final norm; ESM C: 0..n-1 block outputs before the final norm, -1 = last)"),
        sequence: Optional[list[str]] = typer.Option(None, "--sequence", "-s", help="a sequence (repeatable)"),
        batch: int = typer.Option(64, "--batch", help="sequences per engine call (progress granularity)"),
        load_format: Optional[str] = typer.Option(None, "--load-format", help=_LOAD_HELP),
        model_dir: Optional[Path] = typer.Option(None, "--model-dir", help=_DIR_HELP),
    ) -> None:
        """Embeddings, contacts, attentions and logits of every sequence (BioLM encode) into a file."""
        from plmserve.api.biolm import check_include

        suffix = output.suffix.lower()
        if suffix not in _WRITERS:
            raise InvalidParameterError(
                f"-o {output}: unknown output format '{suffix}'; use one of {', '.join(ENCODE_FORMATS)}")
        inc = _split_csv(include, "--include")
        inc = check_include(inc) if engine_spec(model).family == "esm2" else _esmc_include(inc)
        layers_req = parse_repr_layers(repr_layers)
        if batch < 1:
            raise InvalidParameterError("--batch must be at least 1")
        names, seqs = read_inputs(fasta, sequence)
        engine = load_engine(model, load_format, model_dir)
        layers = engine.resolve_layers(layers_req)
        seqs = validate_named(engine, names, seqs, allow_mask=False, source=str(fasta or "--sequence"))
        outs = run_batched(engine.encode, seqs, batch=batch, label="encode",
                           include=tuple(inc), repr_layers=tuple(layers))
        output.parent.mkdir(parents=True, exist_ok=True)
        _WRITERS[suffix](output, names, seqs, outs, inc)
        console.print(f"wrote {len(seqs)} sequence(s) to {output} ({', '.join(inc)}; layers "
                      f"{', '.join(map(str, layers))})", highlight=False)

    @app.command("predict")
    @cli_errors
    def predict(
        fasta: Optional[Path] = typer.Argument(None, help="FASTA file of sequences with '<mask>' tokens"),
        model: str = typer.Option("esm2-650m", "-m", "--model", help=_MODEL_HELP),
        sequence: Optional[list[str]] = typer.Option(None, "--sequence", "-s",
                                                     help="a sequence with one or more '<mask>' (repeatable)"),
        output: Optional[Path] = typer.Option(None, "-o", "--output",
                                              help="write BioLM predict results (.jsonl or .json) instead of a table"),
        top: int = typer.Option(5, "--top", help="amino acids shown per masked position"),
        load_format: Optional[str] = typer.Option(None, "--load-format", help=_LOAD_HELP),
        model_dir: Optional[Path] = typer.Option(None, "--model-dir", help=_DIR_HELP),
    ) -> None:
        """Fill in '<mask>' positions: the most likely amino acids per masked position (BioLM predict)."""
        from plmserve.api.biolm import check_masks

        if output is not None and output.suffix.lower() not in PREDICT_FORMATS:
            raise InvalidParameterError(
                f"-o {output}: unknown output format '{output.suffix}'; use .jsonl or .json")
        names, seqs = read_inputs(fasta, sequence)
        engine = load_engine(model, load_format, model_dir)
        source = str(fasta or "--sequence")
        seqs = validate_named(engine, names, seqs, allow_mask=True, source=source)
        try:
            check_masks(seqs)
        except InvalidInputError as exc:
            raise InvalidInputError(f"{source}: record '{names[exc.item]}': no '<mask>' token; "
                                    "predict needs at least one") from None
        outs = run_batched(engine.predict, seqs, batch=64, label="predict")
        alphabet = list(engine.alphabet_tokens)
        if output is not None:
            rows = [{"name": n, "logits": _np(o["logits"]).tolist(),
                     "sequence_tokens": list(o["sequence_tokens"]), "alphabet_tokens": alphabet}
                    for n, o in zip(names, outs)]
            with open(output, "w") as fh:
                if output.suffix.lower() == ".json":
                    json.dump({"results": rows}, fh)
                else:
                    for row in rows:
                        fh.write(json.dumps(row) + "\n")
            console.print(f"wrote {len(rows)} result(s) to {output}", highlight=False)
            return
        top = max(1, min(top, len(alphabet)))
        for name, o in zip(names, outs):
            logits = _np(o["logits"])
            for pos, tok in enumerate(o["sequence_tokens"], start=1):
                if tok.lower() != "<mask>":
                    continue
                z = logits[pos - 1] - logits[pos - 1].max()
                p = np.exp(z) / np.exp(z).sum()
                best = np.argsort(-p)[:top]
                picks = "  ".join(f"{alphabet[j]} {p[j]:.3f}" for j in best)
                typer.echo(f"{name}\t{pos}\t{picks}")

    @app.command("score-variants")
    @cli_errors
    def score_variants(
        variants: Path = typer.Argument(..., help="CSV with a column of mutation codes (A42G or A42G:L50P)"),
        model: str = typer.Option("esm2-650m", "-m", "--model", help=_MODEL_HELP),
        wild_type: Optional[str] = typer.Option(None, "--wild-type", help="wild-type sequence"),
        wt_fasta: Optional[Path] = typer.Option(None, "--wt-fasta", help="FASTA with the wild type (first record)"),
        output: Path = typer.Option(..., "-o", "--output", help="output CSV: the input columns plus the score column"),
        mutant_column: str = typer.Option("mutant", "--mutant-column", help="column holding the mutation codes"),
        score_column: Optional[str] = typer.Option(None, "--score-column",
                                                   help="name of the added column (default: the slug, e.g. esm2_650m)"),
        method: str = typer.Option("masked_marginals", "--method", help="masked_marginals | wt_marginals"),
        batch: int = typer.Option(256, "--batch", help="variants per engine call (progress granularity)"),
        load_format: Optional[str] = typer.Option(None, "--load-format", help=_LOAD_HELP),
        model_dir: Optional[Path] = typer.Option(None, "--model-dir", help=_DIR_HELP),
    ) -> None:
        """Zero-shot variant effects: masked-marginal log-odds vs the wild type (ESM-1v / ProteinGym)."""
        import pandas as pd

        from plmserve.api.biolm import SCORE_METHODS
        from plmserve.bio.mutations import parse_mutant

        if method not in SCORE_METHODS:
            raise InvalidParameterError(f"--method must be one of {', '.join(SCORE_METHODS)}, not '{method}'")
        if (wild_type is None) == (wt_fasta is None):
            raise InvalidParameterError("give the wild type with exactly one of --wild-type SEQ or --wt-fasta FILE")
        if wt_fasta is not None:
            from plmserve.bio.fasta import read_fasta

            wild_type = read_fasta(wt_fasta)[0].sequence
        if not variants.is_file():
            raise FileNotFoundError(2, "No such file", str(variants))
        try:
            table = pd.read_csv(variants, keep_default_na=False, dtype={mutant_column: str})
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"{variants}: not a readable CSV file ({exc})") from None
        if mutant_column not in table.columns:
            raise InvalidInputError(f"{variants}: no column '{mutant_column}' (columns: "
                                    f"{', '.join(map(str, table.columns))}); use --mutant-column")
        column = score_column or engine_spec(model).slug.replace("-", "_")
        if column in table.columns:
            raise InvalidParameterError(f"{variants} already has a column '{column}'; choose --score-column")
        if batch < 1:
            raise InvalidParameterError("--batch must be at least 1")
        engine = load_engine(model, load_format, model_dir)
        (wt,) = validate_named(engine, ["wild type"], [wild_type], allow_mask=False,
                               source=str(wt_fasta or "--wild-type"))
        codes = [str(c).strip() for c in table[mutant_column].tolist()]
        for i, code in enumerate(codes):
            try:
                parse_mutant(code, wt)
            except InvalidInputError as exc:
                raise InvalidInputError(f"{variants}: line {i + 2} ({mutant_column}='{code}'): {exc}") from None
        scores: list[float] = []
        with progress(disable=None if len(codes) > batch else True) as bar:
            task = bar.add_task("score", total=len(codes))
            for start in range(0, len(codes), batch):
                part = codes[start:start + batch]
                scores.extend(np.asarray(engine.score_mutants(wt, part, method=method), dtype=float).tolist())
                bar.advance(task, len(part))
        table[column] = scores
        output.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(output, index=False)
        console.print(f"scored {len(codes)} variant(s) ({method}) -> {output} column '{column}'", highlight=False)
