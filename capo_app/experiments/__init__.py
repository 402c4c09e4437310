"""The mechanism study (issue: does curvature-aware masking control the policy shift, and when?).

``python -m capo_app.experiments.study [--quick]`` runs it. Modules, in import order:

- :mod:`~capo_app.experiments.arms`: the arms (optimizer, lr, batch, masking rule) and the token rules
  (random mask, sign(A) × π_a group removal, rejection by group);
- :mod:`~capo_app.experiments.toy_regime`: the exact toy token MDP (:mod:`toy_mdps.prefix_tree`);
- :mod:`~capo_app.experiments.llm_regime`: the tiny LLM, head-only or full, with CAPOTrainer;
- :mod:`~capo_app.experiments.protocol`: tuning, thresholds, regimes × arms × seeds -> run records;
- :mod:`~capo_app.experiments.verdict`: per-arm summaries, the criteria, the verdict per regime;
- :mod:`~capo_app.experiments.figures`, :mod:`~capo_app.experiments.mechanism_report`: figures, report.md,
  results.json;
- :mod:`~capo_app.experiments.study`: the configurations and the command line.
"""
