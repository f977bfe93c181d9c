"""Reporting to the NNI trial this process runs, from inside a one-shot search.

A one-shot search runs inside NNI's sequential NAS engine, which swaps NNI's trial
channel and parameters for its own while the supernet trains: ``nni.report_*_result``
there reaches the engine, never the NNI manager (and after the search
``nni.get_current_parameter()`` is the model space). So the trial's own channel is
remembered whenever we see it outside the engine, and reports use that one. This reads
NNI's private trial state (``nni.trial._params``); it is kept to this one module.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import nni.trial
from nni.nas.execution.sequential import SequentialTrialCommandChannel
from nni.runtime.env_vars import trial_env_vars
from nni.runtime.trial_command_channel import get_default_trial_command_channel

__all__ = ["remember_nni_trial", "report_to_nni_trial"]


_nni_trial: Optional[Dict[str, Any]] = None  # this process's NNI trial: its command channel and parameters


def remember_nni_trial() -> Optional[Dict[str, Any]]:
    """The NNI trial this process runs (after ``nni.get_next_parameter()``), or ``None``;
    remembered while it is visible (outside a NAS engine), for :func:`report_to_nni_trial`."""
    global _nni_trial
    channel, record = get_default_trial_command_channel(), nni.trial._params
    # The engine's record (parameters = the model space) outlives the engine: never take it.
    if (record is not None and isinstance(record.get("parameters"), dict)
            and not isinstance(channel, SequentialTrialCommandChannel)
            and (_nni_trial is None or _nni_trial["record"] is not record)):
        _nni_trial = {"channel": channel, "record": record, "sequence": 0}
    return _nni_trial


def report_to_nni_trial(kind: str, metric: Dict[str, Any]) -> bool:
    """Send ``metric`` (a dict with a float ``"default"``) to this process's NNI trial as an
    ``"intermediate"`` or ``"final"`` result; ``False`` (nothing sent) outside a trial."""
    trial = remember_nni_trial()
    if trial is None:
        return False
    sequence = trial["sequence"] if kind == "intermediate" else 0
    trial["channel"].send_metric(type={"intermediate": "PERIODICAL", "final": "FINAL"}[kind],
                                 parameter_id=trial["record"]["parameter_id"],
                                 trial_job_id=trial_env_vars.NNI_TRIAL_JOB_ID, sequence=sequence, value=metric)
    if kind == "intermediate":
        trial["sequence"] += 1
    return True
