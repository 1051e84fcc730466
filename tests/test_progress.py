"""Progress bars: loops report through logging; the CLI's Rich display draws them and keeps them
out of the plain log lines."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import torch
from rich.console import Console

from capture3d.progress import PROGRESS, report, rich_progress


def test_report_is_silent_without_a_listener(caplog):
    log = logging.getLogger("capture3d.tasks.example")
    with caplog.at_level(logging.INFO):
        report(log, "loop", 1, 2)
    assert not caplog.records


def test_rich_bars_follow_a_real_body_fit(caplog):
    """A short body fit draws its iteration bar to the end; no progress record reaches the log."""
    pytest.importorskip("anny")
    from capture3d.tasks.body.anny_model import AnnyBody
    from capture3d.tasks.body.fit import (
        BodyFitConfig,
        BodyObservations,
        FitStage,
        fit_bodies,
    )
    from capture3d.tasks.body.model import COCO17
    from capture3d.tasks.synthesis.bodies import synthesize_bodies

    model = AnnyBody()
    syn = synthesize_bodies(model, count=1, views=1, names=COCO17, seed=0, noise_px=2.0)
    t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    obs = BodyObservations(
        COCO17,
        t(syn.xy),
        torch.ones(1, 1, 17),
        t(syn.rot),
        t(syn.trans),
        t(np.broadcast_to(syn.k, (1, 1, 3, 3))),
        torch.full((1, 1), 300.0),
    )
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, color_system=None)
    with caplog.at_level(logging.INFO), rich_progress(console) as bars:
        fit_bodies(model, obs, BodyFitConfig(stages=(FitStage(5, 0.05, body=False), FitStage(7, 0.05))))
        task = bars.tasks[0]
        assert task.description == "fit bodies (iterations)" and (task.completed, task.total) == (12, 12)
    assert "fit bodies (iterations)" in out.getvalue() and "12/12" in out.getvalue()
    assert not [r for r in caplog.records if r.levelno == PROGRESS], "progress leaked into the log"
    assert logging.getLogger("capture3d").level == logging.NOTSET, "logger level not restored"
