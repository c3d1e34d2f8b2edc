"""The ESM-2 inference engine on Hugging Face ``transformers.EsmForMaskedLM``.

What it computes follows fair-esm (``esm.model.esm2.ESM2``) and BioLM's ESM-2 service
(``../shared/specs/esm2-api.md``): representations at any layer (0 = embedding output, ``n`` = after
the final LayerNorm), contacts from the logistic-regression head over symmetrised, APC-corrected
attention maps (Rao et al. 2021), head- and query-averaged attentions, LM logits, the
pseudo-log-likelihood, and masked-marginal variant scores (Meier et al. 2021, ESM-1v).

How it runs:

* sequences are sorted by length and packed into batches by a token budget (``toks_per_batch``,
  counting padded positions), and results are put back in input order;
* attention runs through PyTorch's fused ``scaled_dot_product_attention`` unless attention
  weights are needed (``contacts``/``attentions``); then an explicit (eager) softmax is used and
  each layer's weights are reduced on the fly (contacts accumulate the regression head layer by
  layer, so no ``layers x heads x T x T`` stack is ever held);
* only the hidden states of the requested layers are kept (forward hooks), the LM head runs only
  when logits are needed and only on residue positions, and the layer loop stops early when the
  deepest requested layer has been computed;
* ``torch.inference_mode``; float32 on CPU, bfloat16/float16 on CUDA.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from plmserve.errors import InvalidParameterError, ModelLoadError
from plmserve.models.engine_common import (  # noqa: F401 (resolve_device_dtype re-exported)
    MaskedLMEngineBase,
    resolve_device_dtype,
    resolve_layer_numbers,
    token_batches,
)

from .alphabet import (
    ALL_TOKENS,
    BOS_ID,
    EOS_ID,
    MASK_ID,
    MASK_TOKEN,
    PAD_ID,
    RESIDUE_LETTERS,
    STANDARD_AA,
    STANDARD_SLICE,
    TOKEN_ID,
    encode_residues,
    num_residues,
    split_tokens,
    validate_sequences,
)
from .architecture import (  # noqa: F401 (ATTN_IMPLEMENTATION, attention_maps, build_hf_model re-exported)
    ATTN_IMPLEMENTATION,
    MAX_POSITIONS,
    _register_attention,
    _state,
    attention_maps,
    build_hf_model,
    esm2_config,
)

logger = logging.getLogger(__name__)

INCLUDE_KEYS = ("mean", "per_token", "bos", "contacts", "logits", "attentions")


class _StopForward(Exception):
    """Raised by a hook once every requested layer has been computed."""


# shared with the ESM C engine (re-exported under their former names)
_token_batches = token_batches


class ESM2Engine(MaskedLMEngineBase):
    """An ESM-2 model ready for inference.

    Attributes:
        slug: the model's public name (``esm2-8m`` ...).
        num_layers: transformer layers ``n``; representation layers are ``0..n``.
        embed_dim: hidden width.
        attention_heads: heads per layer.
        max_residues: 1024 (1026 positions including BOS/EOS).
        load_format: ``dummy`` (random weights) or where the weights came from:
            ``hf-dir``, ``hf-hub`` or ``fair-esm``.
        source: the folder/file/repo the weights came from (None for dummy).
        alphabet_tokens: the 20 standard amino acids, fair-esm order ``L A G V S E R T I D P K Q N F Y M H W C``
            (the columns of every ``logits`` output).
        device, dtype: where and in which precision the model runs.
        toks_per_batch: token budget per forward pass (padded positions count).
        has_contact_head: False when the checkpoint had no contact regression weights.
    """

    alphabet_tokens: list[str] = list(STANDARD_AA)
    _residue_letters = RESIDUE_LETTERS
    _token_id = TOKEN_ID
    _standard_ids = np.arange(STANDARD_SLICE.start, STANDARD_SLICE.stop, dtype=np.int64)
    _encode_residues = staticmethod(encode_residues)
    _validate_sequences = staticmethod(validate_sequences)
    _split_tokens = staticmethod(split_tokens)
    _mask_token = MASK_TOKEN
    _mask_id = MASK_ID

    def __init__(
        self,
        model,
        *,
        slug: str = "esm2",
        load_format: str = "hf-dir",
        source: str | None = None,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = "auto",
        toks_per_batch: int = 4096,
        has_contact_head: bool = True,
    ):
        _register_attention()
        if model.config._attn_implementation != ATTN_IMPLEMENTATION:
            model.config._attn_implementation = ATTN_IMPLEMENTATION
        self._init_model(model, slug=slug, load_format=load_format, source=source, device=device, dtype=dtype)
        self.max_residues: int = int(min(model.config.max_position_embeddings, MAX_POSITIONS)) - 2
        self.toks_per_batch = max(int(toks_per_batch), MAX_POSITIONS)
        self.has_contact_head = has_contact_head
        self._init_slots()  # two forward passes at once (the hook state is thread-local)
        self._install_hooks()

    # ---------------------------------------------------------------- constructors

    @classmethod
    def from_pretrained(cls, path_or_repo: str, *, slug: str | None = None, load_format: str | None = None, **kw) -> "ESM2Engine":
        """Load an HF-format ESM-2 (a folder with ``config.json`` + weights, or a hub repo id such
        as ``facebook/esm2_t6_8M_UR50D``; the hub honours ``HF_HUB_OFFLINE``).

        Keyword arguments are passed to :class:`ESM2Engine` (device, dtype, toks_per_batch).

        Raises:
            ModelLoadError: not an ESM-2 checkpoint, or weights that cannot be read.
        """
        from pathlib import Path

        from transformers import EsmForMaskedLM

        _register_attention()
        try:
            model = EsmForMaskedLM.from_pretrained(str(path_or_repo), attn_implementation=ATTN_IMPLEMENTATION,
                                                   dtype=torch.float32)  # fmt: skip
        except OSError as exc:
            raise ModelLoadError(f"cannot load an ESM-2 model from {path_or_repo}: {exc}") from exc
        cfg = model.config
        if cfg.vocab_size != 33 or cfg.position_embedding_type != "rotary" or not cfg.token_dropout:
            raise ModelLoadError(f"{path_or_repo} is not an ESM-2 checkpoint (vocab 33, rotary, token dropout)")
        has_contacts = _has_trained_contact_head(path_or_repo)
        fmt = load_format or ("hf-dir" if Path(str(path_or_repo)).is_dir() else "hf-hub")
        return cls(model, slug=slug or Path(str(path_or_repo)).name, load_format=fmt, source=str(path_or_repo),
                   has_contact_head=has_contacts, **kw)  # fmt: skip

    @classmethod
    def from_fair_esm(cls, pt_path, *, slug: str | None = None, **kw) -> "ESM2Engine":
        """Load a fair-esm checkpoint (``esm2_*.pt``, torch-hub format) and its
        ``-contact-regression.pt`` (same folder), converting them to the HF layout in memory.

        Raises:
            FileNotFoundError: no such file.
            ModelLoadError: unreadable or not ESM-2.
        """
        from pathlib import Path

        from .weights import read_fair_esm, regression_path_for

        pt_path = Path(pt_path)
        config, state, has_regression = read_fair_esm(pt_path)
        if not has_regression:
            logger.warning("%s not found: contacts are unavailable for %s", regression_path_for(pt_path).name,
                           pt_path.name)
        model = build_hf_model(config, state)
        return cls(model, slug=slug or pt_path.stem, load_format="fair-esm", source=str(pt_path),
                   has_contact_head=has_regression, **kw)  # fmt: skip

    @classmethod
    def dummy(cls, spec_or_config: Any, seed: int = 0, **kw) -> "ESM2Engine":
        """The real architecture with random weights (``--load-format dummy``), for smoke tests and
        benchmarks. ``spec_or_config``: a registry ``ModelSpec``, an ``EsmConfig``, or a dict with
        ``num_layers``, ``embed_dim``, ``attention_heads``. Logs a WARNING."""
        from transformers import EsmConfig

        slug = kw.pop("slug", None)
        if isinstance(spec_or_config, EsmConfig):
            config = spec_or_config
        else:
            c = getattr(spec_or_config, "config", spec_or_config)
            slug = slug or getattr(spec_or_config, "slug", None)
            config = esm2_config(int(c["num_layers"]), int(c["embed_dim"]), int(c["attention_heads"]))
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            model = build_hf_model(config)
            # make the random model non-degenerate (HF's init zeroes biases and the contact head)
            with torch.no_grad():
                model.esm.contact_head.regression.weight.normal_(0.0, 1.0)
                model.lm_head.bias.normal_(0.0, 0.1)
        finally:
            torch.random.set_rng_state(gen_state)
        logger.warning("model %s uses RANDOM weights (load format 'dummy'): outputs are meaningless", slug or "esm2",
                       extra={"plmserve_dummy": True})  # the CLI prints its own warning instead
        return cls(model, slug=slug or "esm2-dummy", load_format="dummy", source=None, **kw)

    # ---------------------------------------------------------------- hooks

    def _install_hooks(self) -> None:
        esm = self.model.esm
        modules = [esm.embeddings] + list(esm.encoder.layer)
        for layer_no, module in enumerate(modules):
            if layer_no == self.num_layers:
                break  # layer n is taken after the final LayerNorm
            module.register_forward_hook(self._make_hook(layer_no))
        esm.encoder.emb_layer_norm_after.register_forward_hook(self._make_hook(self.num_layers))

    @staticmethod
    def _make_hook(layer_no: int):
        def hook(module, args, output):
            capture = getattr(_state, "capture", None)
            if capture is None:
                return None
            if layer_no in capture["layers"]:
                capture["out"][layer_no] = output[0] if isinstance(output, tuple) else output
            if layer_no >= capture["stop_after"]:
                raise _StopForward
            return None

        return hook

    # ---------------------------------------------------------------- validation

    def resolve_layers(self, repr_layers: Sequence[int]) -> list[int]:
        """Layer numbers made non-negative (``-1`` = ``n``), duplicates removed, order kept.

        Raises:
            InvalidParameterError: a layer outside ``[-(n+1), n]`` (the message names the range).
        """
        n = self.num_layers
        return resolve_layer_numbers(repr_layers, low=-(n + 1), high=n, slug=self.slug, what=f"{n} layers")

    # ---------------------------------------------------------------- core forward

    def _tokens(self, residue_ids: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """``[B, T]`` token ids (BOS + residues + EOS, right-padded), attention mask, lengths L."""
        lengths = np.array([len(r) for r in residue_ids])
        T = int(lengths.max()) + 2
        toks = np.full((len(residue_ids), T), PAD_ID, dtype=np.int64)
        toks[:, 0] = BOS_ID
        for b, r in enumerate(residue_ids):
            toks[b, 1 : len(r) + 1] = r
            toks[b, len(r) + 1] = EOS_ID
        tokens = torch.from_numpy(toks).to(self.device)
        mask = (tokens != PAD_ID).long()
        return tokens, mask, lengths

    def _forward(
        self,
        residue_ids: list[np.ndarray],
        *,
        layers: Sequence[int] = (),
        logits: bool = False,
        contacts: bool = False,
        attentions: bool = False,
    ) -> dict[str, Any]:
        """One batched forward pass.

        Returns a dict with ``lengths`` (L per sequence), ``hidden`` ``{layer: [B, T, dim]}``,
        and as requested ``logits`` ``[B, T, 33]`` (float32), ``contacts`` ``[B, T-1, T-1]``
        (float32 logits before the sigmoid, BOS removed; crop to ``[:L, :L]``) and ``attentions``
        ``[n_layers, B, T]`` (float32; heads and valid query rows averaged).
        """
        tokens, mask, lengths = self._tokens(residue_ids)
        B, T = tokens.shape
        n = self.num_layers
        need_layers = set(layers)
        if logits:
            need_layers.add(n)
        want_attn = contacts or attentions
        stop_after = n + 1 if (want_attn or logits or not need_layers) else max(need_layers)
        capture = {"layers": need_layers, "out": {}, "stop_after": stop_after}
        result: dict[str, Any] = {"lengths": lengths}

        collector = None
        if want_attn:
            valid = mask.bool()  # [B, T]
            t_len = mask.sum(-1).to(torch.float32)  # [B]
            keep = valid & (tokens != BOS_ID) & (tokens != EOS_ID)
            keep_f = keep.to(torch.float32)[:, 1:]  # BOS column/row dropped below
            att_rows: list[torch.Tensor] = []
            contact_acc = torch.zeros(B, T - 1, T - 1, device=self.device) if contacts else None
            if contacts:
                w = self.model.esm.contact_head.regression.weight.detach().float().view(n, self.attention_heads)
            layer_idx = [0]

            def collector(probs: torch.Tensor) -> None:  # probs: [B, H, T, T] float32
                li = layer_idx[0]
                layer_idx[0] += 1
                if attentions:
                    per_head = probs.mean(1)  # [B, T(q), T(k)]
                    summed = (per_head * valid.unsqueeze(-1)).sum(1)  # valid query rows only
                    att_rows.append(summed / t_len[:, None])
                if contacts:
                    x = probs[:, :, 1:, 1:] * (keep_f[:, None, :, None] * keep_f[:, None, None, :])
                    x = x + x.transpose(-1, -2)
                    a1 = x.sum(-1, keepdim=True)
                    a2 = x.sum(-2, keepdim=True)
                    a12 = x.sum((-1, -2), keepdim=True)
                    x = x - a1 * a2 / a12
                    contact_acc.add_(torch.einsum("bhij,h->bij", x, w[li]))

        _state.capture = capture
        _state.collector = collector
        try:
            try:
                out = self.model.esm(input_ids=tokens, attention_mask=mask)
                last = out.last_hidden_state
            except _StopForward:
                last = None
        finally:
            _state.capture = None
            _state.collector = None
        hidden = capture["out"]
        if last is not None and n in need_layers:
            hidden[n] = last
        result["hidden"] = hidden
        if logits:
            result["logits"] = self.model.lm_head(hidden[n]).float()
        if contacts:
            result["contacts"] = contact_acc + self.model.esm.contact_head.regression.bias.detach().float()
        if attentions:
            result["attentions"] = torch.stack(att_rows, 0)
        return result

    # ---------------------------------------------------------------- encode

    def encode(
        self,
        sequences: Sequence[str],
        include: Sequence[str] = ("mean",),
        repr_layers: Sequence[int] = (-1,),
    ) -> list[dict[str, Any]]:
        """Embeddings and other per-sequence outputs (BioLM ``encode``).

        Args:
            sequences: protein sequences (validated with :meth:`validate`; ``<mask>`` allowed).
            include: any of ``mean``, ``per_token``, ``bos``, ``contacts``, ``logits``, ``attentions``.
            repr_layers: layers for mean/per_token/bos; negative counts from the end (-1 = last).

        Returns:
            One dict per input sequence, in input order, with only the requested keys (numpy float32):
            ``mean_representations`` ``{layer: [dim]}`` (mean over the L residues, BOS/EOS excluded),
            ``representations`` ``{layer: [L, dim]}``, ``bos_representations`` ``{layer: [dim]}``,
            ``contacts`` ``[L, L]`` (probabilities), ``logits`` ``[L, 20]`` (columns
            :attr:`alphabet_tokens`), ``attentions`` ``[n_layers, L]`` (per layer: mean over heads,
            then over all L+2 query rows, at residue key positions).

        Raises:
            InvalidInputError: bad sequences (see :meth:`validate`).
            InvalidParameterError: unknown ``include`` value, layers out of range, contacts without
                a contact head.
        """
        include = list(include) if include is not None else ["mean"]
        if isinstance(include, str):
            include = [include]
        for key in include:
            if key not in INCLUDE_KEYS:
                raise InvalidParameterError(f"include: unknown value '{key}'; allowed: {', '.join(INCLUDE_KEYS)}")
        inc = set(include)
        layers = self.resolve_layers(repr_layers if repr_layers is not None else (-1,))
        if "contacts" in inc and not self.has_contact_head:
            raise InvalidParameterError(f"contacts are unavailable: {self.slug} was loaded without contact-regression weights")
        seqs = self.validate(sequences, allow_mask=True)
        ids = [encode_residues(s) for s in seqs]
        need_repr = bool(inc & {"mean", "per_token", "bos"})
        want_attn = bool(inc & {"contacts", "attentions"})
        results: list[dict[str, Any] | None] = [None] * len(seqs)
        square = 2**25 // self.attention_heads if want_attn else None

        def work():
            for batch in _token_batches([len(r) for r in ids], self.toks_per_batch, square_budget=square):
                res = self._forward(
                    [ids[i] for i in batch],
                    layers=layers if need_repr else (),
                    logits="logits" in inc,
                    contacts="contacts" in inc,
                    attentions="attentions" in inc,
                )
                hidden = {k: v.float() for k, v in res["hidden"].items()}
                for b, i in enumerate(batch):
                    L = int(res["lengths"][b])
                    item: dict[str, Any] = {}
                    if "mean" in inc:
                        item["mean_representations"] = {l: _np(hidden[l][b, 1 : L + 1].mean(0)) for l in layers}
                    if "per_token" in inc:
                        item["representations"] = {l: _np(hidden[l][b, 1 : L + 1]) for l in layers}
                    if "bos" in inc:
                        item["bos_representations"] = {l: _np(hidden[l][b, 0]) for l in layers}
                    if "contacts" in inc:
                        item["contacts"] = _np(torch.sigmoid(res["contacts"][b, :L, :L]))
                    if "logits" in inc:
                        item["logits"] = _np(res["logits"][b, 1 : L + 1, STANDARD_SLICE])
                    if "attentions" in inc:
                        item["attentions"] = _np(res["attentions"][:, b, 1 : L + 1])
                    results[i] = item

        self._run(work)
        return results  # type: ignore[return-value]

    # ---------------------------------------------------------------- full outputs (fair-esm style)

    vocab_tokens: list[str] = list(ALL_TOKENS)
    """The 33 fair-esm tokens in id order: the columns of :meth:`full_logits`."""

    def full_logits(self, sequences: Sequence[str]) -> list[np.ndarray]:
        """LM-head logits over the whole vocabulary at every token, as fair-esm's
        ``model(tokens)["logits"]``.

        Args:
            sequences: protein sequences (``<mask>`` allowed), see :meth:`validate`.

        Returns:
            Per sequence, in input order: float32 ``[L + 2, 33]``; row 0 is BOS, rows ``1..L`` the
            residues, row ``L + 1`` EOS; columns are :attr:`vocab_tokens` (fair-esm ids:
            ``<cls> <pad> <eos> <unk> L A G ... <mask>``). Batches are padded internally; padding
            never changes the values.

        Raises:
            InvalidInputError: bad sequences (see :meth:`validate`).
        """
        seqs = self.validate(sequences, allow_mask=True)
        ids = [encode_residues(s) for s in seqs]
        out: list[np.ndarray | None] = [None] * len(seqs)

        def work():
            for batch in _token_batches([len(r) for r in ids], self.toks_per_batch):
                res = self._forward([ids[i] for i in batch], logits=True)
                for b, i in enumerate(batch):
                    out[i] = _np(res["logits"][b, : int(res["lengths"][b]) + 2])

        self._run(work)
        return out  # type: ignore[return-value]

    def attention_weights(self, sequences: Sequence[str]) -> list[np.ndarray]:
        """Every layer's and head's attention probabilities, as fair-esm's
        ``model(tokens, need_head_weights=True)["attentions"]`` (without padding).

        Args:
            sequences: protein sequences (``<mask>`` allowed), see :meth:`validate`.

        Returns:
            Per sequence, in input order: float32 ``[n_layers, heads, L + 2, L + 2]`` (query, key;
            BOS and EOS included; each row sums to 1). Memory: ``4 * n * H * (L+2)**2`` bytes per
            sequence (650M, L=1022: 0.7 GB); sequences run one at a time.

        Raises:
            InvalidInputError: bad sequences (see :meth:`validate`).
        """
        seqs = self.validate(sequences, allow_mask=True)
        out: list[np.ndarray] = []

        def work():
            for s in seqs:
                maps: list[torch.Tensor] = []
                _state.collector = lambda probs: maps.append(probs[0].cpu())
                try:
                    self.model.esm(input_ids=self._tokens([encode_residues(s)])[0])
                finally:
                    _state.collector = None
                out.append(torch.stack(maps).float().numpy())

        self._run(work)
        return out

    # ---------------------------------------------------------------- log-likelihoods
    # (predict, log_prob, masked_log_probs, score_mutants: MaskedLMEngineBase)

    def _residue_logits(self, rows: list[np.ndarray]) -> torch.Tensor:
        return self._forward(rows, logits=True)["logits"]

    def _biolm_log_prob(self, residues: np.ndarray, keep: np.ndarray, logits: np.ndarray) -> float:
        """BioLM's ``log_prob`` of one sequence (matches ``biolm_expected.json``): log-softmax of the
        ``[L, 20]`` logits (float32, then float64), summed at the standard residues ``keep``."""
        lp = torch.log_softmax(torch.from_numpy(logits), dim=-1).double().numpy()
        return float(lp[keep, residues[keep] - STANDARD_SLICE.start].sum())


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def _has_trained_contact_head(path_or_repo) -> bool:
    """Whether HF weights include the contact regression (the facebook/esm2 repos do)."""
    from pathlib import Path

    p = Path(str(path_or_repo))
    st = p / "model.safetensors"
    if st.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(st), framework="pt") as f:
                return any("contact_head.regression" in k for k in f.keys())
        except Exception:  # pragma: no cover - unreadable header: assume present
            return True
    return True
