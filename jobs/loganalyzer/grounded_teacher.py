"""The offline teacher: answers every synthesis task from a template profile of the chunk. Not an LLM.

``synthesize --teacher grounded`` (the demo's default without ``OPENAI_API_KEY``). For one chunk,
``profile(content)`` computes:

- **event templates** mined with Drain3 (He et al., "Drain: An Online Log Parsing Approach with Fixed Depth Tree",
  ICWS 2017; the ``drain3`` package, maintained fork ``drain3-improved``) over each line with its timestamp cut
  off, after masking IPv4 addresses (``<IP>``), HDFS block ids (``<BLK>``) and hex numbers (``<HEX>``); Drain
  turns the tokens that vary within a cluster into ``<*>`` (a one-line cluster keeps its numbers). Each line
  belongs to the cluster Drain put it in, and every cluster's final template matches all of its lines;
- **severity** per line: the first level word (``FATAL``, ``ERROR``, ``WARN[ING]``, ``INFO``, ``DEBUG``, ...;
  upper case, or lower case in brackets such as Apache's ``[error]``), normalised (``WARN`` -> ``WARNING``);
- **problem lines**: severity WARNING or worse, or a failure word (``PROBLEM_WORDS``: error, fail, exception,
  denied, refused, timeout, invalid, ...) anywhere in the line;
- **timestamps**: the earliest of ``TIMESTAMP_FORMATS`` found in a line's first 96 characters (ISO 8601, syslog,
  Apache, HDFS, Spark, BGL, HealthApp, Proxifier, Android, 10-digit epoch); the time span is first to last, with
  a duration only when both are of one format;
- **entities** (``ENTITY_PATTERNS``): IPv4 addresses, host names (syslog host field, ``rhost=``, FQDNs with a
  common TLD), HDFS block ids, user names (``user X``, ``for [invalid user] X from``, ``failures for X``,
  ``user=``), file paths (two or more ``/`` segments), with the number of lines each appears on;
- **components**: ``proc[pid]:`` (syslog) or the logger after the level (``INFO dfs.DataNode:``).

The answers (``summarize``, ``root_cause``, ``find_patterns``, ``compare_halves``: Markdown; ``conversation``:
10 messages; ``nlplog_qa``: NLPLog records quoting real lines) are formulaic sentences filled with those
figures, so every number and name they state is true of the chunk. Their "most likely root cause" is the
earliest problem event: a heuristic, said as such. ``reply(task, content, ...)`` returns the text a teacher LLM
would return (JSON for the JSON tasks), so ``synthesize`` validates it the same way.

Errors: ``ValueError`` for an empty chunk or one that is not text (NUL bytes or mostly control characters).
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

NAME = "grounded-drain3"
VERSION = 1

SEVERITY_ORDER = ("EMERGENCY", "ALERT", "CRITICAL", "FATAL", "SEVERE", "ERROR", "WARNING", "NOTICE", "INFO",
                  "DEBUG", "TRACE")
PROBLEM_LEVELS = frozenset(SEVERITY_ORDER[:SEVERITY_ORDER.index("WARNING") + 1])
_LEVEL_ALIASES = {"EMERG": "EMERGENCY", "CRIT": "CRITICAL", "ERR": "ERROR", "WARN": "WARNING"}
_LEVEL_WORDS = "EMERGENCY|EMERG|ALERT|CRITICAL|CRIT|FATAL|SEVERE|ERROR|ERR|WARNING|WARN|NOTICE|INFO|DEBUG|TRACE"
_LEVEL = re.compile(rf"(?<![\w-])({_LEVEL_WORDS})(?![\w-])|\[({_LEVEL_WORDS.lower()})\]")
PROBLEM_WORDS = ("error", "errors", "fail", "failed", "failure", "failures", "fatal", "exception", "denied",
                 "refused", "timeout", "timed out", "invalid", "unreachable", "abort", "aborted", "panic",
                 "corrupt", "corrupted", "killed", "break-in")
_PROBLEM = re.compile(r"(?i)(?<![\w-])(" + "|".join(re.escape(w) for w in PROBLEM_WORDS) + r")(?![\w-])")

# (regex, strptime format or "iso"/"epoch"); a format without a year is parsed in leap year 2000.
TIMESTAMP_FORMATS: tuple[tuple[str, str], ...] = (
    (r"\d{4}-\d{2}-\d{2}-\d{2}\.\d{2}\.\d{2}\.\d{1,6}", "%Y-%m-%d-%H.%M.%S.%f"),           # BGL
    (r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:[.,]\d{1,6})?", "iso"),                   # ISO 8601, log4j
    (r"[A-Z][a-z]{2} [A-Z][a-z]{2} \d{2} \d{2}:\d{2}:\d{2} \d{4}", "%a %b %d %H:%M:%S %Y"),  # Apache
    (r"[A-Z][a-z]{2} +\d{1,2} \d{2}:\d{2}:\d{2}", "%b %d %H:%M:%S"),                       # syslog
    (r"\d{8}-\d{1,2}:\d{1,2}:\d{1,2}:\d{1,3}", "%Y%m%d-%H:%M:%S:%f"),                      # HealthApp
    (r"\d{2}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}", "%y/%m/%d %H:%M:%S"),                         # Spark
    (r"\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3}", "%m-%d %H:%M:%S.%f"),                        # Android
    (r"\d{2}\.\d{2} \d{2}:\d{2}:\d{2}", "%m.%d %H:%M:%S"),                                 # Proxifier
    (r"^\d{6} \d{6}", "%y%m%d %H%M%S"),                                                    # HDFS
    (r"(?<!\d)1\d{9}(?!\d)", "epoch"),                                                     # HPC, BGL
)
_TIMESTAMPS = [(re.compile(p), f) for p, f in TIMESTAMP_FORMATS]
_TLDS = "com|net|org|edu|gov|mil|io|hk|cn|de|uk|jp|fr|ru|br|in|us|eu|local|internal|lan|localdomain"
ENTITY_PATTERNS: dict[str, tuple[str, ...]] = {
    "ip": (r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?!\d|\.\d)",),
    "host": (r"^[A-Z][a-z]{2} +\d{1,2} \d{2}:\d{2}:\d{2} ([\w-]+) ", r"\brhost=([A-Za-z][\w.-]*)",
             rf"(?<![\w.-])((?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+(?:{_TLDS}))(?![\w.-])"),
    "block": (r"\b(blk_-?\d+)\b",),
    "user": (r"\b(?:for|[Ii]nvalid) user ([A-Za-z_][\w.$-]*)", r"\bfor (?:invalid user )?([A-Za-z_][\w.$-]*) from\b",
             r"\bfailures? for (?:invalid user )?([A-Za-z_][\w.$-]*)",
             r"\b(?:ruser|user|logname)=([A-Za-z_][\w.$-]*)"),
    "path": (r"(?<![\w.:/])((?:/[\w.@+-]+){2,}/?)",),
}
_ENTITIES = {k: [re.compile(p) for p in ps] for k, ps in ENTITY_PATTERNS.items()}
ENTITY_NOUNS = {"ip": ("IP address", "IP addresses"), "host": ("host", "hosts"), "block": ("block id", "block ids"),
                "user": ("user", "users"), "path": ("file path", "file paths")}
_COMPONENT = (re.compile(r"\s([A-Za-z][\w.()/-]*)\[\d+\]:"),
              re.compile(rf"\b(?:{_LEVEL_WORDS})\s+(?:\[[^\]]*\]\s+)?([A-Za-z][\w.$]*[\w$]):(?:\s|$)"))


@dataclass
class Line:
    number: int  # 1-based
    text: str
    message: str  # the text without its timestamp: what Drain saw
    template_id: int
    level: str | None
    problem: bool
    timestamp: str | None
    time: datetime | None
    time_format: str | None


@dataclass
class Template:
    id: int
    text: str
    lines: list[int] = field(default_factory=list)  # 1-based line numbers

    @property
    def count(self) -> int:
        return len(self.lines)


@dataclass
class Profile:
    """What ``profile`` found in a chunk; every answer is written from this only."""

    lines: list[Line]
    templates: dict[int, Template]
    entities: dict[str, Counter]  # kind -> value -> lines it appears on
    components: Counter
    blank: int = 0  # blank lines: not counted, but line numbers count them

    @property
    def n(self) -> int:
        return len(self.lines)

    def at(self, number: int) -> Line:
        """The line with this (1-based, blank lines counted) number."""
        return next(ln for ln in self.lines if ln.number == number)

    def ranked(self, lines: list[Line] | None = None) -> list[tuple[Template, int]]:
        """Templates by count (then first appearance) within ``lines`` (default: all)."""
        counts = Counter(ln.template_id for ln in (self.lines if lines is None else lines))
        return sorted(((self.templates[t], c) for t, c in counts.items()),
                      key=lambda tc: (-tc[1], tc[0].lines[0]))

    def problems(self, lines: list[Line] | None = None) -> list[Line]:
        return [ln for ln in (self.lines if lines is None else lines) if ln.problem]

    def levels(self, lines: list[Line] | None = None) -> Counter:
        return Counter(ln.level for ln in (self.lines if lines is None else lines) if ln.level)

    def problem_templates(self) -> list[Template]:
        """Templates with at least one problem line, by first problem line."""
        firsts: dict[int, int] = {}
        for ln in self.problems():
            firsts.setdefault(ln.template_id, ln.number)
        return [self.templates[t] for t, _ in sorted(firsts.items(), key=lambda kv: kv[1])]


def _parse_time(raw: str, fmt: str) -> datetime | None:
    try:
        if fmt == "iso":
            return datetime.fromisoformat(raw.replace(",", ".").replace("T", " "))
        if fmt == "epoch":
            return datetime(1970, 1, 1) + timedelta(seconds=int(raw))
        if "%Y" not in fmt and "%y" not in fmt:
            return datetime.strptime("2000 " + raw, "%Y " + fmt)
        return datetime.strptime(raw, fmt)
    except ValueError:
        return None


def find_timestamp(line: str) -> tuple[str, int, int, datetime | None, str] | None:
    """The earliest known timestamp in the line's first 96 characters (a 10-digit epoch only when no other format
    is there; at one position, ``TIMESTAMP_FORMATS`` order): (text, start, end, parsed or None, format). Start and
    end take in brackets around it (``[Sun Dec 04 04:47:44 2005]``), so that cutting it leaves no ``[ ]``."""
    head = line[:96]
    found = [(fmt == "epoch", m.start(), i, m, fmt) for i, (regex, fmt) in enumerate(_TIMESTAMPS)
             if (m := regex.search(head))]
    if not found:
        return None
    _, _, _, m, fmt = min(found, key=lambda f: f[:3])
    start, end = m.start(), m.end()
    if line[start - 1:start] == "[" and line[end:end + 1] == "]":
        start, end = start - 1, end + 1
    return m.group(0), start, end, _parse_time(m.group(0), fmt), fmt


def severity(line: str) -> str | None:
    m = _LEVEL.search(line)
    if not m:
        return None
    word = (m.group(1) or m.group(2)).upper()
    return _LEVEL_ALIASES.get(word, word)


def _check_text(content: str) -> list[str]:
    if not content or not content.strip():
        raise ValueError("empty chunk: there is no log line to analyse")
    control = sum(1 for c in content if ord(c) < 32 and c not in "\t\n\r")
    if "\x00" in content or control > len(content) // 20:
        raise ValueError("the chunk is not text (NUL bytes or control characters): is it a binary file?")
    return [(n, ln) for n, ln in enumerate(content.replace("\r\n", "\n").split("\n"), 1) if ln.strip()]


def _miner():
    from drain3 import TemplateMiner
    from drain3.masking import MaskingInstruction
    from drain3.template_miner_config import TemplateMinerConfig

    config = TemplateMinerConfig()
    config.masking_instructions = [MaskingInstruction(ENTITY_PATTERNS["ip"][0] + r"(?::\d+)?", "IP"),
                                   MaskingInstruction(r"\bblk_-?\d+\b", "BLK"),
                                   MaskingInstruction(r"\b0x[0-9a-fA-F]+\b", "HEX")]
    config.profiling_enabled = False
    return TemplateMiner(config=config)


def profile(content: str) -> Profile:
    """Profile a chunk's text (lines joined by ``\\n``; blank lines ignored). Raises ValueError (see module)."""
    texts = _check_text(content)
    miner = _miner()
    lines: list[Line] = []
    entities: dict[str, Counter] = {k: Counter() for k in ENTITY_PATTERNS}
    components: Counter = Counter()
    for number, text in texts:
        ts = find_timestamp(text)
        message = (text[:ts[1]] + " " + text[ts[2]:]).strip() if ts else text
        cluster_id = miner.add_log_message(message or text)["cluster_id"]
        level = severity(text)
        problem = level in PROBLEM_LEVELS or bool(_PROBLEM.search(text))
        lines.append(Line(number, text, message or text, cluster_id, level, problem, *(ts[0], ts[3], ts[4]) if ts
                          else (None, None, None)))
        for kind, patterns in _ENTITIES.items():
            found = {m.group(m.lastindex or 0).rstrip(".,:;") for p in patterns for m in p.finditer(text)}
            entities[kind].update(found)
        comp = next((m.group(1) for p in _COMPONENT if (m := p.search(text))), None)
        if comp:
            components[comp] += 1
    templates = {c.cluster_id: Template(c.cluster_id, c.get_template()) for c in miner.drain.clusters}
    for ln in lines:
        templates[ln.template_id].lines.append(ln.number)
    templates = {k: t for k, t in templates.items() if t.lines}
    blank = content.replace("\r\n", "\n").count("\n") + 1 - len(lines)
    return Profile(lines, templates, {k: v for k, v in entities.items() if v}, components, blank)


# ---- wording ------------------------------------------------------------------------------------------------

def _a(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return _plural(s, "second")
    parts = [(s // 86400, "day"), (s % 86400 // 3600, "hour"), (s % 3600 // 60, "minute"), (s % 60, "second")]
    parts = [(v, u) for v, u in parts if v][:2]
    return " ".join(_plural(v, u) for v, u in parts)


def _span(lines: list[Line]) -> str:
    """' from T1 to T2 (duration)' for the lines' first and last timestamps, or '' when they have none."""
    stamped = [ln for ln in lines if ln.timestamp]
    if not stamped:
        return ""
    first, last = stamped[0], stamped[-1]
    if first is last or first.timestamp == last.timestamp:
        return f" at {first.timestamp}"
    text = f" from {first.timestamp} to {last.timestamp}"
    if first.time and last.time and first.time_format == last.time_format and last.time >= first.time:
        text += f" ({_duration((last.time - first.time).total_seconds())})"
    return text


def _levels(levels: Counter) -> str:
    if not levels:
        return "no severity level"
    return ", ".join(f"{lv} {levels[lv]}" for lv in SEVERITY_ORDER if levels[lv])


def _tpl(t: Template) -> str:
    return f"`{t.text}`"


def _entities_sentence(p: Profile, kinds=("ip", "host", "user", "block", "path")) -> str:
    parts = []
    for kind in kinds:
        values = p.entities.get(kind)
        if not values:
            continue
        one, many = ENTITY_NOUNS[kind]
        top = sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        named = ", ".join(f"{v} ({_plural(c, 'line')})" for v, c in top)
        parts.append(f"{_plural(len(values), one, many)}{', most often' if len(values) > 3 else ':'} {named}")
    return ("It mentions " + "; ".join(parts) + ".") if parts else "It names no IP address, host, user, block or path."


def _problem_sentence(p: Profile) -> str:
    probs = p.problems()
    if not probs:
        return "No line reports an error, a failure or a warning."
    first = probs[0]
    return (f"{_plural(len(probs), 'line')} report a problem; the first is line {first.number}: `{first.text}`"
            if len(probs) > 1 else f"One line reports a problem, line {first.number}: `{first.text}`")


def summarize(p: Profile, system: str) -> str:
    top = p.ranked()[:3]
    blanks = f" (and {p.blank} blank)" if p.blank else ""
    lines = [f"This is {_a(system)} log of {_plural(p.n, 'line')}{blanks}{_span(p.lines)}, with "
             f"{_levels(p.levels())}.",
             f"Drain finds {_plural(len(p.templates), 'event template')}; the most frequent "
             f"{'is' if len(top) == 1 else 'are'}:"]
    lines += [f"- {_tpl(t)}: {_plural(c, 'line')}" for t, c in top]
    lines += [_problem_sentence(p), _entities_sentence(p)]
    return "\n".join(lines)


def root_cause(p: Profile, system: str) -> str:
    probs = p.problems()
    if not probs:
        t, c = p.ranked()[0]
        return (f"No line of this {system} log reports an error, a failure or a warning ({_plural(p.n, 'line')}, "
                f"{_levels(p.levels())}), so there is no failure to explain. The most frequent event is {_tpl(t)} "
                f"({_plural(c, 'line')}).")
    kinds = p.problem_templates()
    out = [f"{_plural(len(probs), 'line')} of {p.n} report a problem, in {_plural(len(kinds), 'event template')}:"]
    for t in kinds[:4]:
        own = [p.at(i) for i in t.lines if p.at(i).problem]
        when = f" ({own[0].timestamp})" if own[0].timestamp else ""
        last = f", last at line {own[-1].number}" if len(own) > 1 else ""
        out.append(f"- {_tpl(t)}: {_plural(len(own), 'line')}, first at line {own[0].number}{when}{last}")
    first = probs[0]
    out.append(f"The earliest problem is line {first.number}: `{first.text}`")
    if len(kinds) > 1:
        out.append("The other problems come after it, so it is the most likely root cause; the later ones are "
                   "likely consequences.")
    else:
        out.append(f"It is the only kind of problem here ({_plural(len(probs), 'line')}), so its cause is the most "
                   f"likely root cause.")
    before = [ln for ln in p.lines if ln.number < first.number]
    if before:
        out.append(f"Just before it, line {before[-1].number}: `{before[-1].text}`")
    return "\n".join(out)


def find_patterns(p: Profile, system: str) -> str:
    ranked = p.ranked()
    out = [f"The {_plural(p.n, 'line')} of this {system} log follow {_plural(len(ranked), 'event template')} "
           f"(Drain):"]
    out += [f"{i}. {_tpl(t)}: {_plural(c, 'line')} ({round(100 * c / p.n)}%)" for i, (t, c) in
            enumerate(ranked[:5], 1)]
    if len(ranked) > 5:
        out.append(f"{_plural(len(ranked) - 5, 'other template')} cover the remaining "
                   f"{_plural(sum(c for _, c in ranked[5:]), 'line')}.")
    if p.components:
        out.append("Components: " + ", ".join(f"{c} ({_plural(k, 'line')})" for c, k in p.components.most_common(4))
                   + ".")
    out.append(f"Severity: {_levels(p.levels())}.")
    once = sum(1 for _, c in ranked if c == 1)
    if once:
        out.append(f"{_plural(once, 'template')} {'occurs' if once == 1 else 'occur'} only once.")
    return "\n".join(out)


def _halves(p: Profile) -> tuple[list[Line], list[Line]]:
    h = p.n // 2
    return p.lines[:h], p.lines[h:]


def compare_halves(p: Profile, system: str) -> str:
    first, second = _halves(p)
    if not first:
        return f"This {system} log has a single line, so it has no two halves to compare: `{p.lines[0].text}`"
    a, b = Counter(ln.template_id for ln in first), Counter(ln.template_id for ln in second)
    out = [f"First half: lines {first[0].number}-{first[-1].number}{_span(first)}. Second half: lines "
           f"{second[0].number}-{second[-1].number}{_span(second)}.",
           f"- Problem lines: {len(p.problems(first))} in the first half, {len(p.problems(second))} in the second.",
           f"- Severity: {_levels(p.levels(first))} in the first half; {_levels(p.levels(second))} in the second."]
    only_a = [(p.templates[t], c) for t, c in a.most_common() if t not in b]
    only_b = [(p.templates[t], c) for t, c in b.most_common() if t not in a]
    for label, items in (("Only in the first half", only_a), ("Only in the second half", only_b)):
        if items:
            out.append(f"- {label}: " + "; ".join(f"{_tpl(t)} ({_plural(c, 'line')})" for t, c in items[:3]))
    shared = [(p.templates[t], a[t], b[t]) for t in a if t in b and a[t] != b[t]]
    if shared:
        t, x, y = max(shared, key=lambda s: (abs(s[1] - s[2]), -s[0].lines[0]))
        out.append(f"- Biggest change among shared events: {_tpl(t)} went from {x} to {_plural(y, 'line')}.")
    if not only_a and not only_b and not shared:
        out.append("- Both halves show the same events with the same counts.")
    return "\n".join(out)


# ---- conversation and NLPLog records -------------------------------------------------------------------------

def _qa_overview(p, system):
    t, c = p.ranked()[0]
    return (f"It is {_a(system)} log of {_plural(p.n, 'line')}{_span(p.lines)}. The most frequent event is {_tpl(t)} "
            f"({_plural(c, 'line')}). {_problem_sentence(p)}")


def _qa_problems(p, system):
    return root_cause(p, system)


def _qa_top(p, system):
    (t, c), rest = p.ranked()[0], p.ranked()[1:]
    nxt = f" The next is {_tpl(rest[0][0])} ({_plural(rest[0][1], 'line')})." if rest else ""
    return f"{_tpl(t)}, on {_plural(c, 'line')} of {p.n}.{nxt}"


def _qa_entities(p, system):
    return _entities_sentence(p)


def _qa_halves(p, system):
    return compare_halves(p, system)


def _qa_time(p, system):
    span = _span(p.lines)
    if not span:
        return "I find no timestamp in these lines, so I cannot tell when they were written."
    return f"The timestamped lines run{span}."


def _qa_components(p, system):
    if not p.components:
        return "The lines name no component in a form I recognise (such as `proc[pid]:` or a logger after the level)."
    return "By line count: " + ", ".join(f"{c} ({_plural(k, 'line')})" for c, k in p.components.most_common(5)) + "."


FIRST_QUESTION = "What is this log about?"
FOLLOW_UPS = (("Are there any errors, failures or warnings? What is the likely root cause?", _qa_problems),
              ("Which event is the most frequent?", _qa_top),
              ("Which IP addresses, hosts, users or paths does it mention?", _qa_entities),
              ("What changed between the first and the second half of the log?", _qa_halves),
              ("When does the log start and end?", _qa_time),
              ("Which components write these lines?", _qa_components))


def conversation(p: Profile, system: str, turns: int, seed: str) -> list[dict]:
    """``turns`` messages (user first, alternating): the overview, then follow-ups in an order seeded by ``seed``."""
    order = list(FOLLOW_UPS)
    random.Random(seed).shuffle(order)
    qa = [(FIRST_QUESTION, _qa_overview)] + order
    msgs = []
    for i in range(turns // 2):
        question, answer = qa[i % len(qa)]
        msgs += [{"role": "user", "content": question}, {"role": "assistant", "content": answer(p, system)}]
    if turns % 2:
        msgs.append({"role": "user", "content": qa[(turns // 2) % len(qa)][0]})
    return msgs


def nlplog_records(p: Profile, system: str, items: int) -> list[dict]:
    """NLPLog records about the first line of up to ``items`` templates (problem templates first)."""
    chosen = p.problem_templates() + [t for t, _ in p.ranked() if t not in p.problem_templates()]
    out = []
    for t in chosen[:items]:
        ln = p.at(t.lines[0])
        params = _parameters(t.text, ln.message)
        kind = (f"Its severity is {ln.level}." if ln.level else "It carries no severity level.")
        kind += " It reports a problem." if ln.problem else " It records a routine event, not a problem."
        where = f"lines {t.lines[0]} to {t.lines[-1]}" if t.count > 1 else f"line {t.lines[0]}"
        out.append({"instruction": f"Interpret this {system} log line: what event does it record, what is its "
                                   f"template and which parts vary? '{ln.text}'",
                    "log": ln.text,
                    "output": f"It is an instance of the event template {_tpl(t)}, seen "
                              f"{_plural(t.count, 'time')} in this log ({where}). "
                              + (f"Its variable parts here are: {', '.join(repr(v) for v in params)}. " if params
                                 else "It has no variable part. ") + kind})
    return out


def _parameters(template: str, message: str) -> list[str]:
    """Values of the template's wildcards (``<*>``, ``<IP>``, ...) in the message (whitespace-insensitive)."""
    parts = re.split(r"<[A-Z*]+>", template)
    if len(parts) == 1:
        return []
    regex = "(.+?)".join(r"\s*" + r"\s+".join(map(re.escape, part.split())) + r"\s*" for part in parts)
    m = re.fullmatch(regex, message.strip())
    return list(m.groups()) if m else []


TEXT_ANSWERS = {"summarize": summarize, "root_cause": root_cause, "find_patterns": find_patterns,
                "compare_halves": compare_halves}


def reply(task: str, content: str, system: str = "", seed: str = "", turns: int = 10, items: int = 3) -> str:
    """The teacher's reply text for ``task`` on a chunk: Markdown for text tasks, JSON for ``conversation``
    (``{"messages": [...]}``) and ``nlplog_qa`` (``{"records": [...]}``). Raises ValueError for bad input."""
    p = profile(content)
    system = system or "system"
    if task in TEXT_ANSWERS:
        return TEXT_ANSWERS[task](p, system)
    if task == "conversation":
        return json.dumps({"messages": conversation(p, system, turns, seed)})
    if task == "nlplog_qa":
        return json.dumps({"records": nlplog_records(p, system, items)})
    raise ValueError(f"unknown task {task!r}")
