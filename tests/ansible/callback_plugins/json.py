# A minimal JSON stdout callback for duffy's tests, in the shape of ansible.posix.json
# (ansible-core ships no JSON callback and Galaxy is out of reach): one JSON document
#   {"plays": [{"play": {name, id}, "tasks": [{"task": {name, id, action}, "hosts": {host: result}}]}],
#    "stats": {host: {ok, changed, failures, skipped, unreachable, rescued, ignored}}}
# Results are what callbacks get from Ansible (no_log results already censored by Ansible).
from __future__ import annotations

import json

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: json
    type: stdout
    short_description: one JSON document per playbook run (tests)
    description:
      - Prints plays, tasks with each host's result, and the stats as one JSON document.
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "json"

    def __init__(self, display=None):
        super().__init__(display)
        self.plays = []

    def v2_playbook_on_play_start(self, play):
        self.plays.append({"play": {"name": play.get_name(), "id": str(play._uuid)}, "tasks": []})

    def v2_playbook_on_task_start(self, task, is_conditional):
        self.plays[-1]["tasks"].append(
            {"task": {"name": task.get_name(), "id": str(task._uuid), "action": task.action}, "hosts": {}}
        )

    def v2_playbook_on_handler_task_start(self, task):
        self.v2_playbook_on_task_start(task, False)

    def _record(self, result, **extra):
        res = dict(result._result)
        res.update(extra)
        res.setdefault("action", result._task.action)
        self.plays[-1]["tasks"][-1]["hosts"][result._host.get_name()] = res

    def v2_runner_on_ok(self, result, **kwargs):
        self._record(result)

    def v2_runner_on_failed(self, result, ignore_errors=False, **kwargs):
        self._record(result, failed=True)

    def v2_runner_on_skipped(self, result, **kwargs):
        self._record(result, skipped=True)

    def v2_runner_on_unreachable(self, result, **kwargs):
        self._record(result, unreachable=True)

    def v2_playbook_on_stats(self, stats):
        hosts = sorted(stats.processed.keys())
        out = {"plays": self.plays, "stats": {h: stats.summarize(h) for h in hosts}}
        self._display.display(json.dumps(out, default=str, sort_keys=True))
