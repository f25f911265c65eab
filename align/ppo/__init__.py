"""PPO for language models (InstructGPT step 3), in small pieces the `ppo` stage puts together.

- ``config``: the recipe settings (pydantic; imported when recipes are validated, so no torch).
- ``queries``: prompts for rollouts, from any data source.
- ``policy``: the model roles (policy, ref_policy, value_model, reward adapter) on one shared base.
- ``scoring``: responses to scores, by a reward model (shared-base adapter or separate) or a Python function.
- ``rollout``: generate responses, score them, and record log-probs and values.
- ``update``: advantages and the clipped PPO update over minibatches.
- ``checkpoint``: save and resume the whole training state.
- ``distributed``: data-parallel helpers (torchrun / accelerate launch); no-ops in one process.

The RL math itself (KL, GAE, losses) lives in ``align.rl``. Nothing here imports torch at
package import time.
"""
