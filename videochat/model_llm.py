"""Building the language-model half of `VideoChatModel`: base LLM, 4-bit quantisation, LoRA, vocabulary.

- `build_llm(cfg, device)`: an `AutoModelForCausalLM` folder (dtype, sdpa / flash-attention-2 when installed,
  4-bit NF4 through bitsandbytes) or a randomly initialised model from `cfg.hf_config`.
- `resize_vocab(llm, n)`: grow the embeddings for added tokens (the clip placeholder) deterministically, so a
  saved model that only stores adapters reproduces the same rows on reload.
- `add_lora(llm, lora_cfg)`: peft LoRA on the target modules present in the LLM.
- `base_state_dict(llm, merge_lora)`: the plain transformers state dict of the base model (adapter weights
  dropped, or merged in), for saving HF folders.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
from torch import nn

from videochat.config import LLMConfig, LoRAConfig, VideoChatConfig

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    """'bfloat16' -> torch.bfloat16 (also accepts a torch.dtype)."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r} (use one of {', '.join(DTYPES)})") from None


def compute_dtype(cfg: LLMConfig) -> torch.dtype:
    """The dtype activations run in: the parameter dtype, or bf16 for a 4-bit base."""
    return torch.bfloat16 if cfg.load_in_4bit else torch_dtype(cfg.dtype)


def resolve_attn_implementation(name: str) -> str:
    """flash_attention_2 only when the package is importable (falls back to sdpa with a warning)."""
    if name not in ("eager", "sdpa", "flash_attention_2"):
        raise ValueError(f"attn_implementation must be eager | sdpa | flash_attention_2, got {name!r}")
    if name == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available

        if not (torch.cuda.is_available() and is_flash_attn_2_available()):
            warnings.warn("flash_attention_2 requested but flash-attn/CUDA is not available; using sdpa", stacklevel=3)
            return "sdpa"
    return name


def _require_cuda_for_4bit() -> None:
    if not torch.cuda.is_available():
        raise RuntimeError(
            "llm.load_in_4bit (QLoRA) needs a CUDA GPU: bitsandbytes 4-bit NF4 kernels do not run on CPU. "
            "Set llm.load_in_4bit=false (bf16/fp32 LoRA) on this machine."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RuntimeError("llm.load_in_4bit needs bitsandbytes: pip install 'videochat[gpu]'") from e


def bnb_4bit_config():
    """QLoRA's quantisation: NF4, double quantisation, bf16 compute."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def build_llm(cfg: LLMConfig, device: torch.device | str | None = None) -> nn.Module:
    """The base causal LM (no LoRA yet), frozen. Random when `cfg.path` is None (from `cfg.hf_config`)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    attn = resolve_attn_implementation(cfg.attn_implementation)
    dtype = torch.bfloat16 if cfg.load_in_4bit else torch_dtype(cfg.dtype)
    meta = device is not None and torch.device(device).type == "meta"
    if cfg.load_in_4bit and not meta:  # meta: sizes only; 4-bit storage is estimated by builders.memory_report
        _require_cuda_for_4bit()
    if cfg.path is not None and not meta:
        kwargs: dict[str, Any] = dict(dtype=dtype, attn_implementation=attn)
        if cfg.load_in_4bit:
            dev = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
            kwargs.update(quantization_config=bnb_4bit_config(), device_map={"": dev})
        llm = AutoModelForCausalLM.from_pretrained(cfg.path, **kwargs)
    else:
        if cfg.path is not None:  # meta device: the folder's config.json only, no weights read
            hf_cfg = AutoConfig.from_pretrained(cfg.path)
        elif not cfg.hf_config or "model_type" not in cfg.hf_config:
            raise ValueError("llm.path is unset, so llm.hf_config must be a transformers config dict with 'model_type'")
        else:
            hf = dict(cfg.hf_config)
            hf_cfg = AutoConfig.for_model(hf.pop("model_type"), **hf)
        if device is not None and torch.device(device).type != "cpu":
            # Initialise where it will live (meta: nothing allocated; cuda: a random 7B in seconds, not minutes).
            with torch.device(device):
                llm = AutoModelForCausalLM.from_config(hf_cfg, dtype=dtype, attn_implementation=attn)
        else:
            llm = AutoModelForCausalLM.from_config(hf_cfg, dtype=dtype, attn_implementation=attn)
        if cfg.load_in_4bit and not meta:
            llm = quantize_4bit_(llm, torch.device(device or "cuda"))
    llm.requires_grad_(False)
    return llm


def quantize_4bit_(llm: nn.Module, device: torch.device) -> nn.Module:
    """Quantise a randomly initialised model's Linear layers (not lm_head) to NF4 in place, on `device`.

    The released-weights path goes through `from_pretrained(quantization_config=...)`; this one exists for
    benchmarks with random 7B weights (nothing to download). Same bitsandbytes modules either way.
    """
    import bitsandbytes as bnb

    skip = {"lm_head"}
    for name, module in list(llm.named_modules()):
        for child_name, child in list(module.named_children()):
            if not isinstance(child, nn.Linear) or child_name in skip or isinstance(child, bnb.nn.Linear4bit):
                continue
            q = bnb.nn.Linear4bit(
                child.in_features, child.out_features, bias=child.bias is not None,
                compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4", device="meta",
            )
            w = child.weight.data.to(torch.bfloat16)  # quantised on its way to `device` (Params4bit.to)
            q.weight = bnb.nn.Params4bit(w, requires_grad=False, compress_statistics=True, quant_type="nf4")
            if child.bias is not None:
                q.bias = nn.Parameter(child.bias.data.to(torch.bfloat16), requires_grad=False)
            setattr(module, child_name, q.to(device))
            del child, w
    # nn.Module.to: transformers' override refuses to move quantised models; here only embeddings/norms move.
    nn.Module.to(llm, device)
    # What transformers sets for bnb-loaded models; peft's prepare_model_for_kbit_training keys off it.
    llm.is_loaded_in_4bit = True
    return llm


@torch.no_grad()
def resize_vocab(llm: nn.Module, num_tokens: int) -> bool:
    """Grow input (and untied output) embeddings to `num_tokens`; new rows = mean of the old rows.

    Deterministic on purpose: a checkpoint that stores only adapters rebuilds the very same rows from the
    base on reload. Returns True when something was resized. Never shrinks.
    """
    old = llm.get_input_embeddings().weight.shape[0]
    if num_tokens <= old:
        return False
    out_emb = llm.get_output_embeddings()
    tied = out_emb is not None and out_emb.weight is llm.get_input_embeddings().weight
    llm.resize_token_embeddings(num_tokens, mean_resizing=False)
    emb = llm.get_input_embeddings().weight
    emb[old:] = emb[:old].float().mean(0, keepdim=True).to(emb.dtype)
    out_emb = llm.get_output_embeddings()
    if out_emb is not None and not tied and out_emb.weight is not emb:
        w = out_emb.weight
        w[old:] = w[:old].float().mean(0, keepdim=True).to(w.dtype)
        if getattr(out_emb, "bias", None) is not None:
            out_emb.bias[old:] = out_emb.bias[:old].float().mean().to(out_emb.bias.dtype)
    return True


def lora_targets(llm: nn.Module, wanted: list[str]) -> list[str]:
    """The subset of `wanted` module names that exist as Linear layers in the LLM (order kept)."""
    present = {name.rsplit(".", 1)[-1] for name, m in llm.named_modules() if isinstance(m, nn.Linear)}
    targets = [t for t in wanted if t in present]
    if not targets:
        raise ValueError(
            f"none of lora.target_modules {wanted} is a Linear layer of this LLM; available: {sorted(present)}"
        )
    missing = [t for t in wanted if t not in present]
    if missing:
        log.info("LoRA: target modules not in this LLM, skipped: %s", missing)
    return targets


def add_lora(llm: nn.Module, lora: LoRAConfig, llm_cfg: LLMConfig) -> nn.Module:
    """Wrap the LLM with peft LoRA adapters (after k-bit preparation for a 4-bit base)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if llm_cfg.load_in_4bit:
        llm = prepare_model_for_kbit_training(
            llm,
            use_gradient_checkpointing=llm_cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    peft_cfg = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora_targets(llm, list(lora.target_modules)),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(llm, peft_cfg)


def enable_gradient_checkpointing(llm: nn.Module) -> None:
    """Non-reentrant activation checkpointing (works with frozen inputs and LoRA without input hooks)."""
    kwargs = {"use_reentrant": False}
    if hasattr(llm, "activation_checkpointing_enable"):  # transformers >= 5.x name
        llm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    llm.config.use_cache = False


def is_peft(llm: nn.Module) -> bool:
    """True when the LLM is wrapped by peft (LoRA on)."""
    from peft import PeftModel

    return isinstance(llm, PeftModel)


def is_4bit(llm: nn.Module) -> bool:
    """True when the base weights are bitsandbytes 4-bit."""
    base = llm.get_base_model() if is_peft(llm) else llm
    return bool(getattr(base, "is_loaded_in_4bit", False)) or any(
        type(m).__name__ == "Linear4bit" for m in base.modules()
    )


@torch.no_grad()
def base_state_dict(llm: nn.Module, merge_lora: bool = False) -> dict[str, torch.Tensor]:
    """The transformers state dict of the base model: LoRA dropped, or merged (W + scale * B @ A).

    Non-mutating: the merged weights are computed on the side (fp32 sum, cast back), the live model keeps
    its adapters unmerged.
    """
    if not is_peft(llm):
        return dict(llm.state_dict())
    from peft.tuners.lora import LoraLayer

    base = llm.get_base_model()
    merged: dict[str, torch.Tensor] = {}
    if merge_lora:
        for name, module in base.named_modules():
            if isinstance(module, LoraLayer):
                w = module.get_base_layer().weight
                for adapter in module.active_adapters:
                    if adapter in module.lora_A:
                        delta = module.get_delta_weight(adapter)
                        w = (w.float() + delta.float()).to(w.dtype)
                merged[f"{name}.weight"] = w
    out = {}
    for key, value in base.state_dict().items():
        if "lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        out[key] = merged.get(key, value)
    return out


def default_tokenizer(cfg: VideoChatConfig):
    """`cfg.llm.tokenizer` or `cfg.llm.path` via AutoTokenizer; the in-memory BPE for a random LLM."""
    path = cfg.llm.tokenizer or cfg.llm.path
    if path is None:
        from videochat.tokenizers import bpe_tokenizer

        return bpe_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def ensure_placeholder_id(tokenizer, token: str) -> int:
    """The placeholder's id, added as a special token when missing (`videochat.conversation.ensure_placeholder`)."""
    from videochat.conversation import ensure_placeholder

    return int(ensure_placeholder(tokenizer, token))
