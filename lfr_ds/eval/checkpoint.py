"""Open an lfr-ds checkpoint for evaluation: its config and tokenizer, then the model with its weights.

A checkpoint (``RUN_DIR/checkpoints/step_N/``, see :mod:`lfr_ds.checkpoint`) holds DeepSpeed's files and
``lfr/state.json``, whose ``config`` is the run's full :class:`~lfr_ds.config.TrainConfig`. The model is
rebuilt from ``config.model`` with the vocabulary of the run's tokenizer, and its weights come from
DeepSpeed's own ZeRO consolidation (``get_fp32_state_dict_from_zero_checkpoint``), which reassembles the
fp32 master weights from the optimizer shards for ZeRO-2 and ZeRO-3 alike, whatever the number of ranks
and the training precision. Evaluation is always fp32, on the GPU if there is one, else on CPU.

The evaluation model always uses the local (pure-torch) layer spec. A run trained with Transformer
Engine names its LayerNorms differently (fused into the following linear layer), so those names are
mapped back with megatron-core's own key map; the weights are the same numbers either way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lfr_ds.checkpoint import CHECKPOINTS, LATEST
from lfr_ds.config import ModelConfig
from lfr_ds.data.tokenizer import Tokenizer
from lfr_ds.errors import UserError
from lfr_ds.identity import check_fits, tokenizer_digest
from lfr_ds.launch import import_deepspeed
from lfr_ds.run_state import STATE_FILE, RunState
from lfr_ds.safe_load import check_checkpoint_files, weights_only_loads


@dataclass
class Checkpoint:
    """A complete lfr-ds checkpoint, opened without touching its weights (milliseconds)."""

    path: Path
    """The ``step_*`` directory."""
    state: RunState
    """``lfr/state.json``: step, dataset fingerprint, the run's full config under ``config``."""
    model_config: ModelConfig
    """The run's model shape, ``vocab_size`` set from :attr:`tokenizer`."""
    tokenizer: Tokenizer

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def data_seed(self) -> int:
        """The run's ``data.seed``: a ``.bin/.idx`` held-out set is cut into blocks with it."""
        return int(self.state.config["data"]["seed"])


def find_checkpoint_dir(path: str | os.PathLike) -> Path:
    """The ``step_*`` directory that ``path`` names: a run directory or its ``checkpoints/`` (their
    ``latest``), or a ``step_*`` directory itself."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or directory; give a run directory or a step_* checkpoint")
    for root in (path / CHECKPOINTS, path):
        latest = root / LATEST
        if latest.is_file():
            path = root / latest.read_text().strip()
            break
    if path.name.endswith(".partial"):
        raise UserError(f"{path}: an incomplete checkpoint (its save never finished); use a step_* directory")
    if not (path / STATE_FILE).is_file():
        raise UserError(
            f"{path}: holds no lfr-ds checkpoint (no {STATE_FILE}); give a run directory or a step_* checkpoint"
        )
    return path


def open_checkpoint(path: str | os.PathLike, *, tokenizer: str | os.PathLike | None = None) -> Checkpoint:
    """Find the checkpoint ``path`` names, read its state and config, and open the run's tokenizer.

    The tokenizer is ``tokenizer`` if given, else the run's ``data.tokenizer``, else the one recorded
    in the training dataset's sidecar (``DATA.meta.json``), which must still match its checksum.
    """
    ckpt = find_checkpoint_dir(path)
    state = RunState.read(ckpt)
    try:
        config = state.config
        model = ModelConfig(**config["model"])
    except (KeyError, TypeError):
        raise UserError(
            f"{ckpt}/{STATE_FILE}: unreadable (no valid config.model); the checkpoint is damaged "
            "or from another lfr-ds version"
        ) from None
    except UserError as e:  # a value ModelConfig's validation refuses
        raise UserError(f"{ckpt}/{STATE_FILE}: its config.model is not valid ({e})") from None
    tok = Tokenizer(tokenizer) if tokenizer is not None else _run_tokenizer(ckpt, config)
    check_fits(
        ckpt,
        state,
        {"data.tokenizer": tokenizer_digest(tok), "model.vocab_size": tok.vocab_size},
        flags={"data.tokenizer": "--tokenizer"},
    )
    model_config = dataclasses.replace(model, vocab_size=tok.vocab_size)
    return Checkpoint(ckpt, state, model_config, tok)


def _run_tokenizer(ckpt: Path, config: dict) -> Tokenizer:
    hint = "pass the run's tokenizer explicitly (lfr-eval --tokenizer PATH.model)"
    data = config.get("data", {})
    if data.get("tokenizer"):
        if not os.path.isfile(data["tokenizer"]):
            raise UserError(f"{ckpt}: the run's data.tokenizer {data['tokenizer']} is gone; {hint}")
        return Tokenizer(data["tokenizer"])
    sidecar = Path(data.get("path", "") + ".meta.json")
    try:
        recorded = json.loads(sidecar.read_text())["tokenizer"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{ckpt}: the run's dataset sidecar {sidecar} is missing or unreadable; {hint}") from None
    if not os.path.isfile(recorded["path"]):
        raise UserError(f"{ckpt}: the run's tokenizer {recorded['path']} is gone; {hint}")
    tok = Tokenizer(recorded["path"])
    if tok.sha256 != recorded["sha256"]:
        raise UserError(
            f"{ckpt}: {recorded['path']} has changed since the run's dataset was built (sha256 differs); {hint}"
        )
    return tok


def consolidated_state_dict(ckpt: Path) -> dict[str, torch.Tensor]:
    """The fp32 weights of a ZeRO-2 or ZeRO-3 checkpoint, on CPU, named as the local-spec model names them."""
    import_deepspeed()
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    check_checkpoint_files(ckpt)  # zero_to_fp32 unpickles with weights_only=False: refuse what could run code
    # DeepSpeed narrates the consolidation with print() and progress bars; the CLI's stdout is for results.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), weights_only_loads():
        try:
            state_dict = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name)
        except (FileNotFoundError, ValueError) as e:
            raise UserError(f"{ckpt}: DeepSpeed cannot consolidate this checkpoint's weights ({e})") from None
    # Transformer Engine fuses each LayerNorm into the linear layer after it: map its names back.
    te_names = get_gpt_layer_local_spec().submodules.sharded_state_dict_keys_map
    renamed = {}
    for name, tensor in state_dict.items():
        for local, te in te_names.items():
            name = name.replace(f".{te}", f".{local}")
        renamed[name] = tensor.float()
    return renamed


def load_model(ckpt: Checkpoint) -> torch.nn.Module:
    """Build the checkpoint's GPT (fp32, local layer spec, eval mode) and load its consolidated weights.

    No process group is needed: megatron's single-process one is made here if there is none. Like any
    model build, this reseeds torch's random generators (:func:`~lfr_ds.model.compat.setup_megatron`).
    """
    from lfr_ds.model.compat import setup_megatron
    from lfr_ds.model.gpt import build_model

    state_dict = consolidated_state_dict(ckpt.path)
    cfg = dataclasses.replace(ckpt.model_config, attention_backend="sdpa", sketch_dim=0)
    rows = state_dict["embedding.word_embeddings.weight"].shape[0]
    if rows != cfg.padded_vocab_size:
        raise UserError(
            f"{ckpt.path}: the embedding has {rows} rows, but tokenizer {ckpt.tokenizer.path} "
            f"({ckpt.tokenizer.vocab_size} pieces) pads to {cfg.padded_vocab_size}; pass the run's tokenizer "
            "(lfr-eval --tokenizer PATH.model)"
        )
    setup_megatron(seed=0)  # the seed only feeds the random init, which the checkpoint overwrites
    model = build_model(cfg, bf16=False)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    # _extra_state entries are megatron's per-module FP8 metadata: empty for these modules.
    missing = [k for k in missing if not k.endswith("._extra_state")]
    if missing or unexpected:
        raise UserError(
            f"{ckpt.path}: weights do not fit the model in its config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model.eval()
