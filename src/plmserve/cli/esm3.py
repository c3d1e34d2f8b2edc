"""ESM3 commands: ``plmserve esm3 generate``.

Generate a track of a protein with the same sampler and batching engine as the Forge-compatible
server (``plmserve.models.esm3``), with weights found through the same registry:

    plmserve esm3 generate --track sequence --length 120 --num-steps 20 -o out.fasta
    plmserve esm3 generate --sequence 'MKT___LLIAG____QR' --num-steps 8 --seed 1
    plmserve esm3 generate --sequence MKTAYIAKQR --track secondary_structure -o ss8.fasta
    plmserve esm3 generate --length 80 -n 8 --seed 0 -o designs.json   # full token outputs

``_`` marks a masked residue (ESMProtein string convention); ``|`` is a chain break.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from plmserve.cli._common import cli_errors, console, progress
from plmserve.errors import InvalidInputError, InvalidParameterError

FASTA_SUFFIXES = (".fasta", ".fa", ".faa")


def parse_masked_sequence(text: str) -> list[int]:
    """Token ids [N] (BOS and EOS added) of a one-letter sequence with ``_`` for masks.

    Raises:
        InvalidInputError: empty sequence or an unknown character (the message gives the
            1-based position and the character).
    """
    from plmserve.models.esm3 import constants as C

    seq = "".join(text.split()).upper()
    if not seq:
        raise InvalidInputError("--sequence is empty")
    ids = [C.SEQUENCE_BOS_TOKEN]
    for pos, ch in enumerate(seq, start=1):
        tok = C.SEQUENCE_CHAR_TO_ID.get(ch)
        if tok is None or tok in (C.SEQUENCE_BOS_TOKEN, C.SEQUENCE_EOS_TOKEN, C.SEQUENCE_PAD_TOKEN):
            raise InvalidInputError(
                f"--sequence: invalid character '{ch}' at position {pos}; use amino-acid letters, "
                "'_' for a masked residue and '|' for a chain break",
                position=pos,
                character=ch,
            )
        ids.append(tok)
    ids.append(C.SEQUENCE_EOS_TOKEN)
    return ids


def track_to_string(track: str, tokens: list) -> str:
    """One-letter string of a generated ``sequence`` or ``secondary_structure`` track (BOS/EOS
    dropped; mask ``_``).

    Raises:
        InvalidParameterError: another track (those have no letter form; write ``.json``).
    """
    from plmserve.models.esm3 import constants as C

    body = tokens[1:-1]
    if track == "sequence":
        vocab = C.SEQUENCE_VOCAB
        return "".join("_" if t == C.SEQUENCE_MASK_TOKEN else vocab[t] if len(vocab[t]) == 1 else "X" for t in body)
    if track == "secondary_structure":
        return "".join(C.SS8_VOCAB[t] if t >= 3 else "_" for t in body)
    raise InvalidParameterError(f"the {track} track has no one-letter form; write the output as .json")


def load_esm3_model(model: str, load_format: Optional[str], model_dir: Optional[Path], device: Optional[str]) -> Any:
    """The ESM3 model ``model`` (slug or alias), loaded as the server loads it.

    Raises:
        ModelNotFoundError, WeightsNotFoundError, ModelLoadError, InvalidParameterError.
    """
    from plmserve.models.registry import ModelManager, get_spec
    from plmserve.settings import get_settings

    if load_format is not None and load_format not in ("auto", "dummy"):
        raise InvalidParameterError(f"--load-format must be 'auto' or 'dummy', not '{load_format}'")
    get_spec(model, family="esm3")
    settings = get_settings(load_format=load_format, model_dir=model_dir, device=device)
    with console.status(f"loading {model} ..."):
        loaded = ModelManager(settings).get(model, family="esm3")
    if getattr(loaded, "is_dummy", False) or settings.load_format == "dummy":
        console.print("[bold yellow]WARNING:[/] load-format=dummy: RANDOM weights, outputs are meaningless",
                      highlight=False)
    return loaded


def register(app: typer.Typer) -> None:
    """Add the ``esm3`` sub-command group to the root CLI."""
    esm3_app = typer.Typer(help="ESM3: generate protein tracks by iterative unmasking.", no_args_is_help=True)

    @esm3_app.command("generate")
    @cli_errors
    def generate(
        track: str = typer.Option("sequence", "--track", "-t",
                                  help="track to generate: sequence, structure, secondary_structure, sasa, function"),
        length: Optional[int] = typer.Option(None, "--length", "-l", help="residues of an all-masked prompt"),
        sequence: Optional[str] = typer.Option(None, "--sequence", "-s",
                                               help="prompt sequence; '_' = masked residue, '|' = chain break"),
        num_steps: int = typer.Option(20, "--num-steps", help="decoding steps (1..100)"),
        temperature: float = typer.Option(0.5, "--temperature", help="sampling temperature (>= 0)"),
        annealing: bool = typer.Option(True, "--annealing/--no-annealing", help="anneal the temperature"),
        top_p: float = typer.Option(1.0, "--top-p", help="nucleus cutoff in (0, 1]"),
        schedule: str = typer.Option("cosine", "--schedule", help="cosine | linear"),
        strategy: str = typer.Option("random", "--strategy", help="random | entropy"),
        canonical: bool = typer.Option(True, "--canonical/--allow-noncanonical",
                                       help="never sample X, B, U, Z, O, '.', '-' (sequence track)"),
        num_samples: int = typer.Option(1, "--num-samples", "-n", help="independent samples (batched together)"),
        seed: Optional[int] = typer.Option(None, "--seed", help="seed of sample 1 (sample i uses seed + i - 1)"),
        output: Optional[Path] = typer.Option(None, "-o", "--output",
                                              help="output: .fasta (sequence / secondary_structure) or .json; "
                                                   "default FASTA on stdout"),
        model: str = typer.Option("esm3-open-2024-03", "-m", "--model", help="ESM3 model name or alias"),
        load_format: Optional[str] = typer.Option(None, "--load-format",
                                                  help="auto (real weights) or dummy (random weights)"),
        model_dir: Optional[Path] = typer.Option(None, "--model-dir",
                                                 help="directory with <model>/<weights>.pth (PLMSERVE_MODEL_DIR)"),
        device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N"),
    ) -> None:
        """Generate one track of a protein (ESM3 iterative unmasking, as Forge generate_tensor)."""
        from plmserve.models.esm3 import constants as C
        from plmserve.models.esm3.engine import GenerationEngine
        from plmserve.models.esm3.sampler import GenerationConfig, ProteinTokens
        import torch

        if (length is None) == (sequence is None):
            raise InvalidParameterError("give exactly one of --length N or --sequence SEQ")
        if num_samples < 1:
            raise InvalidParameterError(f"--num-samples must be at least 1, got {num_samples}")
        if output is not None and output.suffix.lower() not in FASTA_SUFFIXES + (".json",):
            raise InvalidParameterError(f"-o {output}: use a .fasta/.fa or .json file")
        as_json = output is not None and output.suffix.lower() == ".json"
        if not as_json and track not in ("sequence", "secondary_structure"):
            raise InvalidParameterError(f"the {track} track has no one-letter form; use -o FILE.json")
        if sequence is not None:
            ids = parse_masked_sequence(sequence)
        else:
            if length < 1:
                raise InvalidParameterError(f"--length must be at least 1, got {length}")
            ids = [C.SEQUENCE_BOS_TOKEN] + [C.SEQUENCE_MASK_TOKEN] * length + [C.SEQUENCE_EOS_TOKEN]
        invalid = list(C.SEQUENCE_NONCANONICAL_IDS) if (canonical and track == "sequence") else []
        config = GenerationConfig(
            track=track, num_steps=num_steps, temperature=temperature, temperature_annealing=annealing,
            top_p=top_p, schedule=schedule, strategy=strategy, invalid_ids=invalid,
        )
        config.validate()
        prompt = ProteinTokens(sequence=torch.tensor(ids, dtype=torch.long))
        prompt.validate()

        loaded = load_esm3_model(model, load_format, model_dir, device)
        engine = GenerationEngine(loaded, batch_window_ms=0)
        try:
            futures = [
                engine.submit(prompt, config, seed=None if seed is None else seed + i) for i in range(num_samples)
            ]
            results = []
            with progress() as bar:
                task = bar.add_task(f"generating {track}", total=num_samples)
                for fut in futures:
                    results.append(fut.result())
                    bar.advance(task)
        finally:
            engine.close()

        if as_json:
            payload = [
                {"name": f"esm3-sample-{i + 1}", "seed": r.seed, "num_steps": r.num_steps, "track": track,
                 "outputs": r.tokens.to_lists()}
                for i, r in enumerate(results)
            ]
            output.write_text(json.dumps(payload))
        else:
            lines = []
            for i, r in enumerate(results):
                text = track_to_string(track, getattr(r.tokens, track).tolist())
                lines.append(f">esm3-sample-{i + 1} track={track} seed={r.seed} steps={r.num_steps} model={model}")
                lines.append(text)
            fasta = "\n".join(lines) + "\n"
            if output is None:
                typer.echo(fasta, nl=False)
            else:
                output.write_text(fasta)
        if output is not None:
            console.print(f"wrote {num_samples} sample(s) to {output}", highlight=False)

    app.add_typer(esm3_app, name="esm3")
