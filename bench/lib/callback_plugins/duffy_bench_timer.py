# Per-task wall time for bench/modules: an aggregate (notification) callback that runs next to
# the stdout callback (the tests' JSON one) when enabled with `callbacks_enabled = duffy_bench_timer`.
# ansible-core alone has no profile_tasks (that is ansible.posix) and the tests' JSON callback keeps
# no durations, hence this one. For each task it records, with time.perf_counter() in the
# controller's main process:
#   start  - v2_playbook_on_task_start (the strategy is about to queue the task)
#   end    - the host's result arrived (v2_runner_on_ok / _failed / _skipped / _unreachable), i.e.
#            templating, worker fork, module upload, exec, result parsing - what a task costs
#   next   - the start of the following task (or the stats), so end..next is the strategy's own
#            bookkeeping between tasks
# and writes them as one JSON document to the file named by $DUFFY_BENCH_TIMINGS at the end.
from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: duffy_bench_timer
    type: aggregate
    short_description: per-task wall time for bench/modules
    description:
      - Writes start/end/next times (seconds, perf_counter) of every task to $DUFFY_BENCH_TIMINGS.
    requirements:
      - enable in callbacks_enabled
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "duffy_bench_timer"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, display=None):
        super().__init__(display)
        self.tasks = []

    def _close_previous(self, now):
        if self.tasks and self.tasks[-1]["next"] is None:
            self.tasks[-1]["next"] = now

    def v2_playbook_on_task_start(self, task, is_conditional):
        now = time.perf_counter()
        self._close_previous(now)
        self.tasks.append({"name": task.get_name(), "action": task.action, "start": now,
                           "end": None, "next": None, "status": None, "changed": None})

    def _done(self, result, status):
        now = time.perf_counter()
        if self.tasks:
            t = self.tasks[-1]
            t["end"] = now
            t["status"] = status
            t["changed"] = bool(result._result.get("changed", False))

    def v2_runner_on_ok(self, result, **kwargs):
        self._done(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False, **kwargs):
        self._done(result, "failed")

    def v2_runner_on_skipped(self, result, **kwargs):
        self._done(result, "skipped")

    def v2_runner_on_unreachable(self, result, **kwargs):
        self._done(result, "unreachable")

    def v2_playbook_on_stats(self, stats):
        self._close_previous(time.perf_counter())
        path = os.environ.get("DUFFY_BENCH_TIMINGS")
        if path:
            with open(path, "w") as f:
                json.dump({"tasks": self.tasks}, f)
