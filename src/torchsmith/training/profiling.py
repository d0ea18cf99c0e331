"""``train.profile: {steps: [a, b]}``: a ``torch.profiler`` trace of optimizer steps a to b, as a callback.

The profiler starts before step ``a`` (1-based) and stops after step ``b``; each step is a range of
its own in the trace (``ProfilerStep#N``). The trace goes to ``profile/trace-rank<R>.json`` (Chrome
trace format: open it in Perfetto, ``chrome://tracing`` or TensorBoard's profiler plugin), written
atomically by each rank. CPU activity always, CUDA kernels too on a GPU. A run that ends before step
``b`` writes what it recorded and says so.
"""

from __future__ import annotations

from typing import Any

from torchsmith.training.hooks import Callback

__all__ = ["Profiler"]


class Profiler(Callback):
    """Record optimizer steps ``steps[0]`` to ``steps[1]`` (inclusive) with ``torch.profiler``."""

    def __init__(self, steps: list[int]):
        self.first, self.last = int(steps[0]), int(steps[1])
        self.prof: Any = None
        self.path: Any = None
        self._range: Any = None

    def _start(self, trainer: Any) -> None:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU]
        if trainer.ctx.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        self.prof = profile(activities=activities)
        self.prof.__enter__()
        self._mark(trainer.step + 1)

    def _mark(self, step: int | None) -> None:
        """Close the current step's range in the trace and open the next one's (None: none)."""
        from torch.profiler import record_function

        if self._range is not None:
            self._range.__exit__(None, None, None)
            self._range = None
        if step is not None:
            self._range = record_function(f"ProfilerStep#{step}")
            self._range.__enter__()

    def _stop(self, trainer: Any, complete: bool) -> None:
        from torchsmith._io import atomic_path

        self._mark(None)
        prof, self.prof = self.prof, None
        prof.__exit__(None, None, None)
        folder = trainer.out_dir / "profile"
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"trace-rank{trainer.ctx.rank}.json"
        with atomic_path(self.path) as tmp:
            prof.export_chrome_trace(str(tmp))
        if trainer.ctx.is_main:
            what = f"steps {self.first}-{self.last}" if complete else f"steps {self.first}-{trainer.step} "
            trainer.log(
                f"profile: {what}{'' if complete else '(the run ended before step ' + str(self.last) + ')'} "
                f"-> {self.path}"
            )

    def on_train_start(self, trainer: Any) -> None:
        if trainer.step == self.first - 1:
            self._start(trainer)

    def on_step_end(self, trainer: Any, loss: Any) -> None:
        if self.prof is not None:
            if trainer.step >= self.last:
                self._stop(trainer, complete=True)
            else:
                self._mark(trainer.step + 1)
        elif trainer.step == self.first - 1:
            self._start(trainer)

    def on_train_end(self, trainer: Any) -> None:
        if self.prof is not None:
            self._stop(trainer, complete=False)

    def teardown(self, trainer: Any) -> None:
        if self.prof is not None:
            self._mark(None)
            prof, self.prof = self.prof, None
            prof.__exit__(None, None, None)
