"""The checks of ``capo train`` before anything loads, in one function the real run and the dry run share.

:func:`preflight` refuses every setting the run would refuse (:func:`capo_app.checks.check_training`), resolves
``--resume_from_checkpoint`` (:func:`capo_app.resume.resume_point`; a resume must keep the run's settings,
:func:`capo_app.resume.check_same_run`) and checks that the output folder may be
claimed (:func:`capo_app.run_folder.check_claim`). ``capo train --dry-run`` calls it on the recipe's real values,
so a dry run says OK only for what the real run accepts.
"""

from __future__ import annotations

from typing import Any

from capo_app.checks import check_training
from capo_app.resume import ResumePoint, check_same_run, resume_point, run_identity
from capo_app.run_folder import check_claim


def preflight(script_args: Any, config: Any) -> ResumePoint | None:
    """Refuse what the run would refuse; returns the checkpoint it resumes from (None: a fresh run).

    Raises:
        UsageError: One line on the first problem found.
    """
    check_training(script_args, config)
    resume = resume_point(
        str(config.output_dir), config.resume_from_checkpoint, script_args.resume_without_capo_state,
        int(config.max_steps),
    )  # fmt: skip
    if resume is not None:
        check_same_run(resume, run_identity(script_args, config))
    check_claim(
        str(config.output_dir),
        overwrite=script_args.overwrite_output_dir,
        resume=resume is not None,
    )
    return resume
