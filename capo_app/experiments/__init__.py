"""Small-scale reproductions of the paper's stability and sample-efficiency claims (§6, App. I, J, L).

- :mod:`capo_app.experiments.toy_stability`: the seven methods on an exact toy token MDP (linear-softmax
  policy = the last layer, exact J and KL), ``python -m capo_app.experiments.toy_stability``.
- :mod:`capo_app.experiments.stability`: the seven methods on the tiny embedded LLM with
  :class:`capo.CAPOTrainer`, ``python -m capo_app.experiments.stability`` (also runs the toy comparison).
- :mod:`capo_app.experiments.analysis`, :mod:`capo_app.experiments.plots`: seed statistics, collapse and
  sample-efficiency definitions, figures.
"""

from capo_app.experiments.methods import BATCH_RATIO, LR_RATIO, METHODS, Method

__all__ = ["BATCH_RATIO", "LR_RATIO", "METHODS", "Method"]
