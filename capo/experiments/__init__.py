"""Small-scale reproductions of the paper's stability and sample-efficiency claims (§6, App. I, J, L).

- :mod:`capo.experiments.toy_stability`: the seven methods on an exact toy token MDP (linear-softmax
  policy = the last layer, exact J and KL), ``python -m capo.experiments.toy_stability``.
- :mod:`capo.experiments.stability`: the seven methods on the tiny embedded LLM with
  :class:`capo.CAPOTrainer`, ``python -m capo.experiments.stability`` (also runs the toy comparison).
- :mod:`capo.experiments.analysis`, :mod:`capo.experiments.plots`: seed statistics, collapse and
  sample-efficiency definitions, figures.
"""

from capo.experiments.methods import BATCH_RATIO, LR_RATIO, METHODS, Method

__all__ = ["BATCH_RATIO", "LR_RATIO", "METHODS", "Method"]
