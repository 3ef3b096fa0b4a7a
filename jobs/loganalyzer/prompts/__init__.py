"""Task prompts (``tasks.yaml``) and the one function that formats a log question the way the model sees it.

The same ``user_turn`` is used to ask the teacher, to build SFT data, at evaluation and by the chatbot, so the
prompt format is identical everywhere: ``question + " Please answer in detail." + "\\n\\nLog content:\\n\\n" + log``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml

TEXT_TASKS = ("summarize", "root_cause", "find_patterns", "compare_halves")
JSON_TASKS = ("conversation", "nlplog_qa")
ALL_TASKS = TEXT_TASKS + JSON_TASKS


@dataclass(frozen=True)
class Prompts:
    version: int
    system: str
    answer_suffix: str
    log_header: str
    tasks: dict[str, dict]

    def question(self, task: str) -> str:
        """The SFT question of a single-answer task (KeyError for JSON tasks)."""
        return self.tasks[task]["question"]

    def user_turn(self, task: str, log: str) -> str:
        """The seed's SFT user turn: question + answer suffix + ``Log content:`` header + log."""
        return self.question(task) + self.answer_suffix + self.log_header + log

    def with_log(self, text: str, log: str) -> str:
        """Append a log to a free-form message (the first user turn of a conversation)."""
        return text + self.log_header + log

    def teacher_messages(self, task: str, log: str, turns: int, items: int) -> list[dict[str, str]]:
        """Chat messages asking the teacher for ``task`` on ``log``."""
        spec = self.tasks[task]
        if spec["format"] == "text":
            user = self.user_turn(task, log)
        else:
            user = spec["instructions"].format(turns=turns, items=items) + self.log_header + log
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


@lru_cache(maxsize=1)
def load_prompts() -> Prompts:
    """Load the packaged ``tasks.yaml``; the task names must be exactly ``ALL_TASKS``."""
    data = yaml.safe_load(resources.files(__package__).joinpath("tasks.yaml").read_text(encoding="utf-8"))
    if set(data["tasks"]) != set(ALL_TASKS):
        raise RuntimeError(f"tasks.yaml defines {sorted(data['tasks'])}, expected {sorted(ALL_TASKS)}")
    return Prompts(data["version"], data["system"], data["answer_suffix"], data["log_header"], data["tasks"])
