"""`align plan`: peak accelerator memory per recipe stage, before anything is downloaded or run.

The estimate is arithmetic on the model's config (`align.model_configs`) and the recipe's
settings. Every figure is a list of named terms; docs/memory.md derives each formula and records
how the estimate compares with measured peaks. In short, for a stage that trains:

    peak = weights + adapter + optimizer state [+ gradients when accumulating]
           + max(forward/backward: activations + loss-head buffers,
                 optimizer step: gradients + optimizer temporaries)
           + framework overhead (CUDA; the CUDA context itself is not counted)

Activations follow what PyTorch saves for backward in a transformers Llama block (checked
tensor-by-tensor with `torch.autograd.graph.saved_tensors_hooks`, see
tests/integration/test_plan_measured_saved.py). Generation adds the KV cache
``2 * layers * kv_heads * head_dim * tokens * batch * bytes``; PPO adds the reference, value and
reward roles, shared on one base or as separate copies, and takes the largest of its phases.

align's own stages (sft, reward, dpo, ppo, rank, eval, self_instruct) are estimated from their
validated settings (the recipe's pydantic models; `align.plan.settings` is the one place their fields
are read, so the schema's defaults are the plan's); any other section is handled by what it holds
(model roles, ``adapter``, ``train``, generation settings). ``device="cpu"`` estimates the RAM a CPU
run adds (what the tests measure).

The reward stage's batch element is one prompt with all K of its responses: K is ``rank.k`` only
when ``reward.data`` is ``@rank``; a local rankings/pairs file is read for its largest prompt group;
anything else (a hub dataset) is taken as pairs, K = 2, unless the caller passes ``reward_k``.
The eval stage follows ``eval.model`` (precision, quantization) for every model it loads, one copy
of each base for the LoRA policies and reference on it, and its KL sampling (``kl_samples``,
``kl_batch_size``).

Modules: `memory` (weights, adapters, optimizer state, KV cache), `activations` (one trained model),
`settings` (reading the stages' settings), `training_stages` and `generation_stages` (one estimator per
stage), `planner` (model references, dispatch, `plan_recipe`), `suggest`, `render`.
"""

from align.plan.activations import (
    TrainSetup,
    activation_terms,
    autocast_weight_copies,
    head_term,
    layer_activation_bytes,
    training_terms,
)
from align.plan.estimate import StageEstimate, Suggestion
from align.plan.generation_stages import PROMPT_GUESS
from align.plan.memory import (
    CUDA_OVERHEAD,
    GIB,
    KIB,
    MIB,
    Dtypes,
    Tensors,
    Term,
    adapter_tensors,
    base_weight_bytes,
    dtypes_for,
    full_tensors,
    generation_terms,
    kv_cache_bytes,
    lora_targets,
    numel,
    optimizer_bytes,
    overhead_term,
    quantized_linear_bytes,
    weights_term,
)
from align.plan.planner import DEFAULT_REWARD_K, Planner, find_roles, plan_recipe
from align.plan.render import format_bytes, parse_size, render
from align.plan.settings import Role
from align.plan.suggest import suggest
from align.plan.training_stages import trl_tiled_head

__all__ = [
    "CUDA_OVERHEAD", "DEFAULT_REWARD_K", "GIB", "KIB", "MIB", "PROMPT_GUESS", "Dtypes", "Planner", "Role",
    "StageEstimate", "Suggestion", "Tensors", "Term", "TrainSetup", "activation_terms", "adapter_tensors",
    "autocast_weight_copies", "base_weight_bytes", "dtypes_for", "find_roles", "format_bytes", "full_tensors",
    "generation_terms", "head_term", "kv_cache_bytes", "layer_activation_bytes", "lora_targets", "numel",
    "optimizer_bytes", "overhead_term", "parse_size", "plan_recipe", "quantized_linear_bytes", "render", "suggest",
    "training_terms", "trl_tiled_head", "weights_term",
]
