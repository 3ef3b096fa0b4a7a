"""Redaction — secrets removed and personal data pseudonymised before a log leaves for a teacher or an endpoint.

    loganalyzer redact --chunks chunks.jsonl --out redacted/chunks.jsonl [pii_entities=[...]] [keep_mapping=true]

Built on Microsoft Presidio: an ``AnalyzerEngine`` with pattern recognizers only and Presidio's ``NoOpNlpEngine``
(no spaCy model: none is needed for these entities, and none is downloaded), and an ``AnonymizerEngine`` whose
operators replace each finding. Called once per text (a whole chunk, a pasted log), not per line.

**Secrets** are always removed, each replaced by a typed placeholder ``<SECRET:TYPE>``. Where each pattern comes
from is its ``SecretPattern.source`` in ``secret_patterns()``: most are the token formats of Yelp's
``detect-secrets`` plugins (imported from the installed package, so they follow its releases); the rest follow
the format's specification (RFC 6750 bearer tokens, RFC 7617 Basic credentials, RFC 7519 JWTs, RFC 7468 PEM
private-key blocks, RFC 3986 userinfo) or the vendor's documented key format, as written in gitleaks' rules.

**Personal data** (``pii_entities``; default ``DEFAULT_PII``) is pseudonymised **consistently and
format-preserving** within one ``Redactor`` (one run, one chat): each distinct value of a type gets the next unused
pseudonym the first time it is seen and keeps it, so "repeated failures from one host" stay visible and distinct
values stay distinct:

- ``IP_ADDRESS`` (Presidio's recognizer, and IPv4 addresses written with dashes in host names such as
  ``ip-10-0-3-7``, which keep their dashes): IPv4 -> the documentation ranges 192.0.2.0/24, 198.51.100.0/24,
  203.0.113.0/24 (RFC 5737), then 198.18.0.0/15 (RFC 2544) and 240.0.0.0/4; IPv6 -> 2001:db8::/32 (RFC 3849);
  a CIDR suffix is kept. Not replaced (no personal data, and needed to read a log): loopback, unspecified and
  multicast addresses, netmasks (255.255.255.255 among them), addresses in the documentation ranges (already
  pseudonyms, or never real), and dotted numbers written as versions (``v1.2.3.4``, ``version 10.0.0.1``; a bare
  ``4.15.0.112`` is taken for an address).
- ``EMAIL_ADDRESS`` (Presidio's recognizer; its domain check uses tldextract's bundled public-suffix snapshot,
  never the network) -> ``user-N@example.com``; addresses at RFC 2606 example domains are left as they are.
- ``CREDIT_CARD`` (Presidio's recognizer and Luhn check, on card layouts and issuer prefixes) -> a Luhn-valid
  number of the same length and layout starting with 9 (no card network issues those, so a pseudonym is never
  mistaken for a card again).
- ``MAC_ADDRESS`` (Presidio's recognizer; off by default) -> 00:00:5E:00:53:xx (RFC 7042), then 02:00:00:xx:xx:xx,
  keeping the separator.

Placeholders and pseudonyms in the documentation ranges are not recognised again, so redacting twice changes
nothing up to 762 distinct IPv4 addresses (and 256 MACs); past them a pseudonym would be pseudonymised again. A
chunk from this stage is therefore marked (``redaction.pii_entities``), and ``synthesize`` only checks it for
secrets: it reaches the teacher exactly as this stage wrote it, which is what build-datasets pairs answers with.
Timestamps, PIDs, block ids, hex codes and version numbers are not flagged: ``tests/test_redact.py`` measures
the share of changed Loghub lines.

Stage outputs: ``--out`` (the chunks with ``content`` redacted and a ``redaction`` entry, its counts per type),
``redaction_summary.json`` beside it (counts per entity type; also logged to MLflow) and, only with
``keep_mapping=true``, ``redaction_mapping.json`` (original -> pseudonym, mode 0600): it stays in the output
directory and is never logged or sent anywhere.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import sys
import time
import typing
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field

from loganalyzer.config import ConfigError, StageConfig, parse_config
from loganalyzer.io import JsonlWriter, read_jsonl

log = logging.getLogger("loganalyzer.redact")

RedactMode = Literal["auto", "on", "off"]
PiiEntity = Literal["IP_ADDRESS", "EMAIL_ADDRESS", "CREDIT_CARD", "MAC_ADDRESS"]
REDACT_MODE_HELP = ("auto: redact when the endpoint is not on loopback; on: always; off: never (a warning names an "
                    "external endpoint)")
PII_ENTITIES: tuple[str, ...] = typing.get_args(PiiEntity)
DEFAULT_PII = ("IP_ADDRESS", "EMAIL_ADDRESS", "CREDIT_CARD")
# Singular and plural names for notices ("3 IPs, 1 GitHub token replaced ...").
PII_LABELS = {"IP_ADDRESS": ("IP", "IPs"), "EMAIL_ADDRESS": ("e-mail address", "e-mail addresses"),
              "CREDIT_CARD": ("card number", "card numbers"), "MAC_ADDRESS": ("MAC address", "MAC addresses")}


@dataclass(frozen=True)
class SecretPattern:
    """One secret format: the placeholder's type, a label for notices, the regexes, and where they come from.

    A regex with a group named ``secret`` replaces only that group (the value after ``password=``), else the whole
    match."""

    type: str
    label: str
    regexes: tuple[re.Pattern | Triggered, ...]
    source: str


@dataclass(frozen=True)
class Triggered:
    """A regex tried only on a text holding one of ``words`` (lower case): a substring test costs far less than a
    case-insensitive or lookbehind-led regex scan, and most log text holds none of them."""

    regex: re.Pattern
    words: tuple[str, ...]


def _when(words: tuple[str, ...], *patterns: str) -> tuple[Triggered, ...]:
    return tuple(Triggered(re.compile(p), words) for p in patterns)


def _detect_secrets(module: str, cls: str, keep: slice = slice(None),
                    words: tuple[str, ...] = ()) -> tuple[re.Pattern | Triggered, ...]:
    """The compiled ``denylist`` of a detect-secrets plugin (``keep`` selects some of them), ``Triggered`` by
    ``words`` when given."""
    import importlib

    regexes = tuple(getattr(importlib.import_module(f"detect_secrets.plugins.{module}"), cls).denylist)[keep]
    return tuple(Triggered(r, words) for r in regexes) if words else regexes


_PEM_KEY = r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
# `key=value`, `key: value`, `"key": "value"` (also JSON escaped inside a JSON log line, \"key\":\"value\"),
# `key => value` and `--key value`, keys matched case-insensitively as the end of a longer name (DB_PASSWORD,
# HF_TOKEN) or before a few suffixes (secret_key_base, password_hash). The value stays on its line; a quoted value
# is replaced inside its quotes, an unquoted one up to whitespace, `;`, `&` or a quote (commas included: a password
# may hold one). Placeholders are not matched again.
_SCHEME_NAMES = "bearer|basic|token|negotiate|apikey"  # HTTP authentication schemes (Digest has its own rule)
_SCHEMES = f"(?:{_SCHEME_NAMES})"
# A token that looks random: a digit, or a capital after a small letter, in its characters (case-sensitive).
_B64TOKEN, _BASE64 = r"[\w.~+/-]", r"[A-Za-z0-9+/]"
_RANDOM_B64TOKEN, _RANDOM_BASE64 = (rf"(?-i:(?={c}*(?:\d|[a-z]{c}*[A-Z])))" for c in (_B64TOKEN, _BASE64))
_HEADER = r"""(?:proxy-)?authorization\\?["']?[ \t]*[:=][ \t]*\\?["']?"""  # also "Authorization": "..."
_KEY_END = r"""(?:[_-]?(?:base|value|hash|str|string|plain|text))?\\?["']?[ \t]*(?:=>|[=:])[ \t]*"""
_QUOTED = r"""\\?["'](?P<secret>{guard}(?!<SECRET:)[^"'\\\n]+)"""
_BARE = r"""(?P<secret>{guard}(?!<SECRET:)(?!>|\\?["'])[^\s;&'"\\]+)"""
_VALUE_CHARS = r"""[^\s;&'"\\]"""
# Values that say something about a password rather than being one ("Secret: true", "password changed", and PAM's
# "pam_unix(passwd:chauthtok)").
_NOT_A_VALUE = (r"(?!(?:true|false|null|none|nil|yes|no|changed|updated|required|expired|invalid|incorrect|empty"
                r"|set|unset|ok|chauthtok|auth|account|session)\b)")
# A token-like value: 8+ characters with a letter and a digit, not a 0x hex number (not `max_token=12345678`, not
# `Kind:`, not ZooKeeper's `sessionid: 0x14ede63a5a70002`, an id that log analysis follows).
_TOKEN_LIKE = rf"(?!0x[0-9A-Fa-f]+\b)(?={_VALUE_CHARS}*\d)(?={_VALUE_CHARS}*[A-Za-z])(?={_VALUE_CHARS}{{8}})"


def _key_value(keys: str, words: tuple[str, ...], guard: str = "") -> tuple[Triggered, ...]:
    """Regexes for the value of a key-value pair (or a ``--flag value``) whose key ends in one of ``keys`` (each
    holding one of ``words``); ``guard`` is a lookahead every value must pass."""
    pair, flag = rf"(?i)(?<!<)(?:{keys}){_KEY_END}", rf"(?i)(?<![\w-])--(?:[\w-]*[_-])?(?:{keys})[ \t]+"
    return _when(words, *(pair + v.format(guard=guard) for v in (_QUOTED, _BARE)), flag + _BARE.format(guard=guard))


@cache
def secret_patterns() -> tuple[SecretPattern, ...]:
    """Every supported secret format; each one's ``source`` says where its patterns come from. Where two find the
    same span, the earlier one names it: token formats first, key-value and header rules last."""
    ds = "detect-secrets {} ({})"
    return (
        SecretPattern("PRIVATE_KEY", "private key", (
            # RFC 7468 PEM block from its header to its footer, whatever lies between (Proc-Type/DEK-Info or
            # Version headers, a log prefix on every line, escaped newlines); without a footer (a block cut by the
            # end of a chunk), to the end of the text.
            re.compile(_PEM_KEY + r"[\s\S]*?(?:-----END [^\n]*?-----|\Z)"),),
            "RFC 7468 PEM private-key labels (the headers detect-secrets' PrivateKeyDetector lists)"),
        SecretPattern("AWS_KEY", "AWS key", (
            *_detect_secrets("aws", "AWSKeyDetector", slice(0, 1)),  # access key ids: AKIA..., ASIA..., ...
            *_when(("aws",), r"(?i)aws_?secret_?(?:access_?)?key\\?[\"']?[ \t]*[=:][ \t]*\\?[\"']?"
                                r"(?P<secret>[A-Za-z0-9/+]{40})(?![\w/+])")),
            ds.format("AWSKeyDetector", "access key id") + "; secret access key assignments (gitleaks aws rule)"),
        SecretPattern("GCP_API_KEY", "Google API key", _when(("aiza",), r"\bAIza[0-9A-Za-z_-]{35}(?![\w-])"),
                      "Google API key format AIza + 35 chars (gitleaks gcp-api-key)"),
        SecretPattern("GITHUB_TOKEN", "GitHub token", (
            *_detect_secrets("github_token", "GitHubTokenDetector"),
            *_when(("github_pat_",), r"\bgithub_pat_\w{82}\b")),
            ds.format("GitHubTokenDetector", "ghp_/gho_/ghu_/ghs_/ghr_") + "; fine-grained github_pat_ "
            "(gitleaks github-fine-grained-pat)"),
        SecretPattern("GITLAB_TOKEN", "GitLab token", _detect_secrets("gitlab_token", "GitLabTokenDetector"),
                      ds.format("GitLabTokenDetector", "glpat-, runner, CI, ... tokens")),
        SecretPattern("SLACK_TOKEN", "Slack token",
                      _detect_secrets("slack", "SlackDetector", words=("xox", "hooks.slack")),
                      ds.format("SlackDetector", "xox?- tokens, webhook URLs")),
        SecretPattern("STRIPE_KEY", "Stripe key", (
            *_detect_secrets("stripe", "StripeDetector", words=("k_live_",)),
            *_when(("k_test_", "k_live_", "k_prod_"), r"\b(?:sk|rk)_(?:test|live|prod)_[0-9a-zA-Z]{10,99}\b")),
            ds.format("StripeDetector", "live keys") + "; test/prod keys (gitleaks stripe-access-token)"),
        SecretPattern("OPENAI_KEY", "OpenAI key", (
            *_detect_secrets("openai", "OpenAIDetector"),
            *_when(("sk-",), r"\bsk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{20,}")),
            ds.format("OpenAIDetector", "legacy keys") + "; project/service keys (gitleaks openai-api-key)"),
        SecretPattern("JWT", "JWT", _when(("eyj",), r"\beyJ[A-Za-z0-9_-]{2,}\.eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*"),
                      "RFC 7519 compact JWS (base64url header.payload.signature); detect-secrets JwtTokenDetector "
                      "matches the same prefix"),
        SecretPattern("API_TOKEN", "API token", (
            # not TelegramBotTokenDetector: `\d{8,10}:` + 35 chars also matches storage WWIDs (Loghub HPC)
            *(p for m, c, w in (("azure_storage_key", "AzureStorageKeyDetector", ("accountkey=",)),
                                ("discord", "DiscordBotTokenDetector", ()),
                                ("mailchimp", "MailchimpDetector", ("-us",)),
                                ("npm", "NpmDetector", ("_authtoken",)),
                                ("pypi_token", "PypiTokenDetector", ("pypi-",)),
                                ("sendgrid", "SendGridDetector", ("sg.",)),
                                ("square_oauth", "SquareOAuthDetector", ("sq0csp-",)))
              for p in _detect_secrets(m, c, words=w)),
            # Hugging Face and Anthropic tokens (gitleaks huggingface-access-token, anthropic-api-key)
            *_when(("hf_",), r"\bhf_[A-Za-z]{34}\b"),
            *_when(("sk-ant-",), r"\bsk-ant-(?:api|admin)\d\d-[\w-]{80,100}\b"),
            # `...token=`, `credentials:`, `session_id=` pairs (HF_TOKEN=, ?token=, "auth_token": ...) with a
            # token-like value, so that `token: Kind: HDFS_DELEGATION_TOKEN` or `credentials: user bob` stay
            *_key_value(r"token|credentials?|session(?:[_-]?id)?|(?<![a-z])sid", ("token", "credential", "session",
                                                                                  "sid"), _TOKEN_LIKE)),
            "detect-secrets Azure storage, Discord, Mailchimp, npm, PyPI, SendGrid, Square detectors; gitleaks "
            "Hugging Face and Anthropic rules; token, credentials and session pairs"),
        SecretPattern("AUTH_HEADER", "authorization credential", (
            # the value of an Authorization header (also as a JSON or dict key): after a scheme, its token; after
            # Digest, the rest of the line (username, nonce, response); with no scheme, 8+ characters with a digit
            # (so not "Authorization: required")
            *_when(("authorization",),
                   rf"(?i)\b{_HEADER}{_SCHEMES}[ \t]+(?P<secret>(?!<SECRET:)[^\s,;\"'\\\[\]]{{4,}})",
                   rf"(?i)\b{_HEADER}digest[ \t]+(?P<secret>(?!<SECRET:)[^\n]+)",
                   rf"(?i)\b{_HEADER}(?P<secret>(?!<SECRET:)(?!(?:{_SCHEME_NAMES}|digest)\b)"
                   r"(?=[^\s,;\"'\\\[\]]*\d)[^\s,;\"'\\\[\]]{8,})"),
            # outside a header: an RFC 6750 b64token after "Bearer", base64 (RFC 7617) after "Basic", when it
            # looks random (a digit, or a capital after a small letter): "Basic authentication" is not one
            *_when(("bearer",),
                   rf"(?i)\bbearer[ \t]+(?P<secret>(?!<SECRET:){_RANDOM_B64TOKEN}[A-Za-z0-9._~+/-]{{8,}}=*)"),
            *_when(("basic",), rf"\b[Bb]asic[ \t]+(?P<secret>{_RANDOM_BASE64}[A-Za-z0-9+/]{{8,}}={{0,2}})(?![\w+/=])")),
            "RFC 6750 bearer tokens, RFC 7617 Basic credentials, Authorization header values"),
        SecretPattern("URL_PASSWORD", "password in a URL", (
            # RFC 3986 userinfo: the password may hold sub-delims (!$&'()*+,;=), and, written unencoded, '@':
            # it ends at the authority's last '@'. (detect-secrets' BasicAuthDetector stops at sub-delims.)
            *_when(("://",), r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/?#@\s]*:(?P<secret>(?!<SECRET:)[^/?#\s]+)@"
                                 r"(?=[^@/?#\s]*(?:[/?#\s]|$))"),),
            "RFC 3986 userinfo (scheme://user:PASSWORD@host)"),
        SecretPattern("PASSWORD", "password", (
            *_key_value(r"pass(?:word|wd|phrase)|secret(?:[_-]?key)?|(?:api|access|private|subscription)[_-]?key"
                        r"|[_.-]pwd", ("pass", "secret", "key", "pwd"), _NOT_A_VALUE),
            # the short keys `pass`, `pw` (?user=bob&pass=..., openssl's pass:...) with a value of a letter and a
            # digit, 6+ characters
            *_key_value(r"(?<![a-z])(?:pass|pw)", ("pass", "pw"),
                        rf"(?={_VALUE_CHARS}*\d)(?={_VALUE_CHARS}*[A-Za-z])(?={_VALUE_CHARS}{{6}})")),
            "key-value pairs whose key names a password, secret or key (the keywords of detect-secrets' "
            "KeywordDetector, in log formats; a bare `pwd` is the working directory, so it needs a prefix)"),
    )


def secret_types() -> tuple[str, ...]:
    return tuple(p.type for p in secret_patterns())


# -- recognizers -------------------------------------------------------------------------------------------------
def _recognizers(pii_entities: tuple[str, ...]) -> list:
    from presidio_analyzer import LocalRecognizer, Pattern, RecognizerResult
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IpRecognizer,
        MacAddressRecognizer,
    )

    class SecretRecognizer(LocalRecognizer):
        """One ``SecretPattern``: each regex's ``secret`` group, or its whole match; score 1."""

        def __init__(self, pattern: SecretPattern):
            self.pattern = pattern
            super().__init__(supported_entities=[pattern.type], name=f"secret:{pattern.type}")

        def load(self) -> None:
            pass

        def analyze(self, text, entities, nlp_artifacts=None):
            results, low = [], None
            for rx in self.pattern.regexes:
                if isinstance(rx, Triggered):
                    low = text.lower() if low is None else low
                    if not any(w in low for w in rx.words):
                        continue
                    rx = rx.regex
                group = "secret" if "secret" in rx.groupindex else 0
                for m in rx.finditer(text):
                    start, end = m.span(group)
                    if end > start:
                        results.append(RecognizerResult(self.pattern.type, start, end, 1.0))
            return results

    class CardNumberRecognizer(CreditCardRecognizer):
        """Presidio's card recognizer (its Luhn check) on card layouts only: 13-19 digits in one run, or groups of
        four (Amex 4-6-5) with one separator, starting with an issuer prefix (ISO/IEC 7812 IINs: Visa 4,
        Mastercard 51-55 and 2221-2720, Amex 34/37, Discover 6011/65, Diners 300-305/36/38, JCB 35), and not
        inside a longer number, id or decimal. Presidio's own pattern takes any 3-5 digit groups, so an epoch
        timestamp next to a year (Loghub BGL: ``1117838978 2005.06.03``) passes one time in ten."""

        def __init__(self):
            edge, end = r"(?<![\w.,:/-])", r"(?![\w]|[.,:/-]\w)"
            iin = r"(?:4\d{3}|5[1-5]\d{2}|2[2-7]\d{2}|3[0568]\d{2}|6(?:011|5\d{2}))"
            super().__init__(patterns=[
                Pattern("card (one run)", edge + iin + r"\d{9,15}" + end, 0.3),
                Pattern("card (groups of 4)", edge + iin + r"([ -])\d{4}\1\d{4}\1\d{1,7}" + end, 0.3),
                Pattern("card (Amex 4-6-5)", edge + r"3[47]\d{2}([ -])\d{6}\1\d{5}" + end, 0.3)])

    class OfflineEmailRecognizer(EmailRecognizer):
        """Presidio's e-mail recognizer with tldextract on its bundled public-suffix snapshot (no download)."""

        def validate_result(self, pattern_text: str) -> bool:
            return _tld_extract()(pattern_text).fqdn != ""

    class LogIpRecognizer(IpRecognizer):
        """Presidio's IP recognizer minus dotted numbers written as versions (``v1.2.3.4``, ``version 1.2.3.4``),
        plus IPv4 addresses written with dashes in host names (``ip-10-0-3-7``, ``calvisitor-10-105-162-178``).
        A dotted number followed by more (``10.0.0.1.5000``) stays an IP: that is tcpdump's address.port."""

        def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):
            dashed = [RecognizerResult("IP_ADDRESS", m.start(), m.end(), 0.6) for m in _DASHED_IP.finditer(text)]
            return [r for r in super().analyze(text, entities, nlp_artifacts, regex_flags)
                    if not _VERSION_BEFORE.search(text, max(0, r.start - 9), r.start)] + dashed

    pii = {"IP_ADDRESS": LogIpRecognizer, "EMAIL_ADDRESS": OfflineEmailRecognizer,
           "CREDIT_CARD": CardNumberRecognizer, "MAC_ADDRESS": MacAddressRecognizer}
    return [*(SecretRecognizer(p) for p in secret_patterns()), *(pii[e]() for e in pii_entities)]


_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_DASHED_IP = re.compile(rf"(?<=[A-Za-z]-){_OCTET}(?:-{_OCTET}){{3}}(?![\w-])")
_VERSION_BEFORE = re.compile(r"(?:\b[vV]|(?i:\bversion|\bver|\brelease)[\s:=]*)\Z")


@cache
def _tld_extract():
    import tldextract

    return tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)


# -- pseudonyms --------------------------------------------------------------------------------------------------
_IPV4_DOC = tuple(ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"))
_IPV4_MORE = tuple(ipaddress.ip_network(n) for n in ("198.18.0.0/15", "240.0.0.0/4"))
_IPV6_DOC = ipaddress.ip_network("2001:db8::/32")
_EXAMPLE_DOMAIN = re.compile(r"(?i)@(?:[\w-]+\.)*(?:example\.(?:com|net|org)|example|test|invalid|localhost)$")
_MAC_DOC, _MAC_MORE = "00:00:5E:00:53:", "02:00:00:"


def _luhn_digit(digits: str) -> str:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 == 0 else 1)
        total += n - 9 if n > 9 else n
    return str((10 - total % 10) % 10)


class Pseudonymizer:
    """Consistent pseudonyms per entity type: the n-th distinct value becomes the n-th pseudonym (see the module
    docstring). Values are compared in a canonical form (an IP without its prefix length or spelling, an e-mail in
    lower case, a card's digits, a MAC in upper case with colons), so ``10.0.0.5`` and ``10.0.0.5/24`` share one.

    ``keeps(type, value)`` says which values are left as they are; a kept value that lies in the pseudonym space
    (an address from a documentation range, ``user-3@example.com``) is not handed out afterwards. One seen after it
    was handed out is taken for that pseudonym: that is how the chat's questions quote hosts back. ``mapping``:
    canonical original -> pseudonym, per type."""

    def __init__(self):
        self.mapping: dict[str, dict[str, str]] = {e: {} for e in PII_ENTITIES}
        self._used: dict[str, set[str]] = {e: set() for e in PII_ENTITIES}
        self._make: dict[str, Callable[[str, int], str]] = {
            "IP_ADDRESS": self._ip, "EMAIL_ADDRESS": lambda v, n: f"user-{n}@example.com",
            "CREDIT_CARD": self._card, "MAC_ADDRESS": self._mac}

    @staticmethod
    def canonical(entity: str, value: str) -> str:
        if entity == "IP_ADDRESS":
            return str(ipaddress.ip_interface(value.replace("-", ".")).ip)
        if entity == "CREDIT_CARD":
            return "".join(c for c in value if c.isdigit())
        if entity == "MAC_ADDRESS":
            return value.upper().replace("-", ":").replace(".", "")
        return value.lower()

    def __call__(self, entity: str, value: str) -> str:
        """The pseudonym of ``value``, in ``value``'s own layout (prefix length, separators, case)."""
        key, seen = self.canonical(entity, value), self.mapping[entity]
        if key not in seen:
            n = len(seen) + 1
            while (fake := self._make[entity](key, n)) in self._used[entity]:
                n += 1
            seen[key] = fake
            self._used[entity].add(fake)
        return self._layout(entity, value, seen[key])

    def keeps(self, entity: str, value: str) -> bool:
        """Whether ``value`` stays (see the module docstring); one in the pseudonym space is reserved."""
        keep, reserve = self._keeps(entity, value)
        if reserve:
            self._used[entity].add(self.canonical(entity, value))
        return keep

    @staticmethod
    def _keeps(entity: str, value: str) -> tuple[bool, bool]:
        if entity == "IP_ADDRESS":
            try:
                ip = ipaddress.ip_interface(value.replace("-", ".")).ip
            except ValueError:
                return True, False
            if ip.is_loopback or ip.is_unspecified or ip.is_multicast:
                return True, False
            if ip.version == 6:
                return ip in _IPV6_DOC, ip in _IPV6_DOC
            inverse = ~int(ip) & 0xFFFFFFFF  # a netmask is ones then zeros: its inverse plus one is a power of 2
            doc = any(ip in r for r in _IPV4_DOC)
            return doc or inverse & (inverse + 1) == 0, doc
        if entity == "EMAIL_ADDRESS":
            example = bool(_EXAMPLE_DOMAIN.search(value))
            return example, example
        if entity == "MAC_ADDRESS":
            v = value.upper().replace("-", ":")
            doc = v.startswith(_MAC_DOC)
            return doc or v in ("FF:FF:FF:FF:FF:FF", "00:00:00:00:00:00"), doc
        return False, False

    @staticmethod
    def _ip(key: str, n: int) -> str:
        ip = ipaddress.ip_address(key)
        if ip.version == 6:
            return str(_IPV6_DOC[n])
        for net in (*_IPV4_DOC, *_IPV4_MORE):
            hosts = net.num_addresses - 2  # no network or broadcast address
            if n <= hosts:
                return str(net[n])
            n -= hosts
        raise RuntimeError("more distinct IPv4 addresses than pseudonyms (over 268 million)")

    @staticmethod
    def _card(key: str, n: int) -> str:
        body = "9" + str(n).zfill(len(key) - 2)
        return body + _luhn_digit(body)

    @staticmethod
    def _mac(key: str, n: int) -> str:
        if n <= 256:
            return _MAC_DOC + f"{n - 1:02X}"
        return _MAC_MORE + ":".join(f"{b:02X}" for b in (n - 257).to_bytes(3, "big"))

    @staticmethod
    def _layout(entity: str, value: str, fake: str) -> str:
        if entity == "IP_ADDRESS":
            fake = fake.replace(".", "-") if "-" in value else fake
            return f"{fake}/{value.split('/', 1)[1]}" if "/" in value else fake
        if entity == "CREDIT_CARD":
            digits = iter(fake)
            return "".join(next(digits) if c.isdigit() else c for c in value)
        if entity == "MAC_ADDRESS":
            fake = fake.replace(":", "-" if "-" in value else ":")
            return fake.lower() if value.islower() else fake
        return fake


# -- the redactor ------------------------------------------------------------------------------------------------
class Redactor:
    """Remove secrets and pseudonymise ``pii_entities`` in texts; one instance = one consistent pseudonym space.

    ``redact(text)`` returns ``(redacted_text, counts)`` with ``counts`` the replacements per entity type in that
    text; ``counts`` (attribute) accumulates over every call. ``redact(text, pii=False)`` removes secrets only
    (for text whose personal data was pseudonymised already). Raises ValueError for an unknown entity name.
    """

    def __init__(self, pii_entities: tuple[str, ...] | list[str] = DEFAULT_PII):
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import NoOpNlpEngine
        from presidio_anonymizer import AnonymizerEngine

        unknown = sorted(set(pii_entities) - set(PII_ENTITIES))
        if unknown:
            raise ValueError(f"unknown PII entities {unknown}; choose from {list(PII_ENTITIES)}")
        self.pii_entities = tuple(pii_entities)
        self._secrets = frozenset(secret_types())
        self._rank = {t: i for i, t in enumerate((*secret_types(), *PII_ENTITIES))}
        registry = RecognizerRegistry(recognizers=_recognizers(self.pii_entities), supported_languages=["en"])
        nlp = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
        self.analyzer = AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=["en"])
        self.anonymizer = AnonymizerEngine()
        self.pseudonyms = Pseudonymizer()
        self.counts: Counter[str] = Counter()

    def find(self, text: str, pii: bool = True) -> list:
        """Presidio's findings in ``text`` without overlaps: secrets win over personal data, then longer spans;
        values the pseudonymizer keeps (loopback IPs, existing pseudonyms, ...) are left out, and all personal
        data when ``pii`` is false."""
        results = sorted(self.analyzer.analyze(text=text, language="en"),
                         key=lambda r: (r.entity_type not in self._secrets, r.start - r.end,
                                        self._rank[r.entity_type], r.start))
        kept, taken = [], []
        for r in results:
            if r.entity_type not in self._secrets and (
                    not pii or self.pseudonyms.keeps(r.entity_type, text[r.start:r.end])):
                continue
            if all(r.end <= s or r.start >= e for s, e in taken):
                kept.append(r)
                taken.append((r.start, r.end))
        return kept

    def redact(self, text: str, pii: bool = True) -> tuple[str, Counter[str]]:
        from presidio_anonymizer.entities import OperatorConfig

        found = self.find(text, pii)
        counts = Counter(r.entity_type for r in found)
        if not found:
            return text, counts
        fakes = {}  # pseudonyms numbered in reading order; the anonymizer only looks them up
        for r in sorted(found, key=lambda r: r.start):
            if r.entity_type not in self._secrets:
                value = text[r.start:r.end]
                fakes[r.entity_type, value] = self.pseudonyms(r.entity_type, value)
        operators = {t: OperatorConfig("replace", {"new_value": f"<SECRET:{t}>"}) for t in counts
                     if t in self._secrets}
        operators.update({t: OperatorConfig("custom", {"lambda": lambda v, t=t: fakes.get((t, v), v)})
                          for t in counts if t not in self._secrets})
        result = self.anonymizer.anonymize(text=text, analyzer_results=found, operators=operators,
                                           merge_entities_with_spaces=False)
        self.counts.update(counts)
        return result.text, counts


def describe(counts: Counter[str] | dict[str, int]) -> str:
    """``"3 IPs, 1 GitHub token"``: the counts in words, most frequent first ('' when nothing was replaced)."""
    labels = {**PII_LABELS, **{p.type: (p.label, p.label + "s") for p in secret_patterns()}}
    return ", ".join(f"{n} {labels[t][n != 1]}" for t, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                     if n)


def is_loopback(url: str) -> bool:
    """Whether ``url``'s host is on loopback: ``localhost`` (and ``*.localhost``), 127.0.0.0/8 or ``::1``. Only
    the literal host counts: a name is not resolved (DNS can point elsewhere tomorrow)."""
    host = (urlsplit(url if "//" in url else f"//{url}").hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redact_together(items: list[list[str]], pii_entities: list[str], where: str) -> tuple[list[list[str]], dict]:
    """Each item's texts redacted in order with one ``Redactor`` (one pseudonym space for all items: a value reads
    the same wherever it recurs); returns the texts and the counts per entity type, and logs them for ``where``."""
    redactor = Redactor(pii_entities)
    out = [[redactor.redact(text)[0] for text in item] for item in items]
    counts = dict(sorted(redactor.counts.items()))
    log.info("redacted before sending to %s: %s", where, describe(counts) or "nothing to replace")
    return out, counts


def redaction_active(mode: RedactMode, endpoint: str, what: str) -> bool:
    """Whether texts sent to ``endpoint`` are redacted under ``mode`` (see ``REDACT_MODE_HELP``); ``off``
    toward an endpoint that is not on loopback logs a warning naming it. ``what`` names the sender in logs."""
    if mode == "on":
        return True
    external = bool(endpoint) and not is_loopback(endpoint)
    if mode == "off":
        if external:
            log.warning("%s: redaction is off: logs go unredacted to %s, an endpoint that is not on loopback",
                        what, endpoint)
        return False
    return external


# -- the stage ---------------------------------------------------------------------------------------------------
class RedactionSettings(StageConfig):
    """The redaction fields of every stage that sends logs to an endpoint (synthesize, evaluate, chat)."""

    redact: RedactMode = Field("auto", description=REDACT_MODE_HELP)
    pii_entities: list[PiiEntity] = Field(list(DEFAULT_PII), description="personal data pseudonymised when "
                                                                         "redacting (secrets always go)")


class RedactConfig(StageConfig):
    """Remove secrets and pseudonymise personal data in chunks (Presidio), before they go to a teacher."""

    chunks: str = Field(description="chunks JSON Lines from `loganalyzer chunk`")
    out: str = Field(description="redacted chunks JSON Lines (redaction_summary.json is written beside it)")
    pii_entities: list[PiiEntity] = Field(list(DEFAULT_PII), description="personal data to pseudonymise "
                                                                          "(secrets are always removed)")
    keep_mapping: bool = Field(False, description="write redaction_mapping.json (original -> pseudonym, mode 0600) "
                                                  "beside --out; never logged or sent")


def redact_row(row: dict, redactor: Redactor) -> dict:
    """A chunk row with ``content`` redacted and a ``redaction`` entry ``{pii_entities, counts}`` (the counts of
    this pass). A row that a redactor with the same or more ``pii_entities`` marked so already gets its secrets
    checked only: pseudonyms are not pseudonymised again (one beyond the documentation ranges would change), so
    the text stays exactly as the redact stage wrote it and as build-datasets pairs it with answers."""
    done = set(row.get("redaction", {}).get("pii_entities", ()))
    text, counts = redactor.redact(row["content"], pii=not done >= set(redactor.pii_entities))
    return {**row, "content": text, "redaction": {"pii_entities": sorted(done | set(redactor.pii_entities)),
                                                  "counts": dict(sorted(counts.items()))}}


def changed(row: dict) -> bool:
    """Whether redaction replaced anything in a row from ``redact_row``."""
    return bool(row.get("redaction", {}).get("counts"))


def write_mapping(redactor: Redactor, path: Path) -> None:
    """original -> pseudonym per entity type, readable by the owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({t: m for t, m in redactor.pseudonyms.mapping.items() if m}, fh, indent=2)


def run(cfg: RedactConfig) -> dict:
    """Redact every chunk of ``cfg.chunks`` into ``cfg.out``; return and write the summary."""
    if not Path(cfg.chunks).is_file():
        raise ConfigError(f"--chunks {cfg.chunks}: no such file (run `loganalyzer chunk` first)")
    out = Path(cfg.out)
    if out.resolve() == Path(cfg.chunks).resolve():
        raise ConfigError(f"--out {cfg.out} is the input file; write the redacted chunks to another file")
    try:
        rows = list(read_jsonl(cfg.chunks, required=("id", "content")))
    except ValueError as exc:
        raise ConfigError(f"{exc}; every chunk row needs 'id' and 'content' (the output of `loganalyzer chunk`)") \
            from None
    t0 = time.perf_counter()
    redactor = Redactor(cfg.pii_entities)
    from tqdm import tqdm

    redacted = [redact_row(r, redactor) for r in tqdm(rows, desc="redact", unit="chunk", disable=len(rows) < 50)]
    seconds = time.perf_counter() - t0
    with JsonlWriter(out) as fh:
        for row in redacted:
            fh.write(row)
    lines = sum(r["content"].count("\n") + 1 for r in rows)
    summary = {"chunks": len(rows), "chunks_changed": sum(map(changed, redacted)), "lines": lines,
               "counts": dict(sorted(redactor.counts.items())), "replaced": sum(redactor.counts.values()),
               "pii_entities": cfg.pii_entities, "secret_types": list(secret_types()),
               "seconds": round(seconds, 3), "lines_per_s": round(lines / seconds, 1) if seconds else None}
    summary_path = out.with_name("redaction_summary.json")
    summary_path.write_text(json.dumps(summary, indent=2))
    if cfg.keep_mapping:
        write_mapping(redactor, out.with_name("redaction_mapping.json"))
    log.info("redact: %d of %d chunks changed: %s", summary["chunks_changed"], len(rows),
             describe(redactor.counts) or "nothing to replace")
    from loganalyzer.tracking import log_stage

    log_stage("redact", cfg.model_dump(), summary, [summary_path])
    return summary


def main(argv: list[str] | None = None) -> None:
    from loganalyzer.logs import setup_logging

    setup_logging()
    summary = run(parse_config(RedactConfig, "redact", argv))
    print(json.dumps(summary, indent=2), file=sys.stderr)


if __name__ == "__main__":
    from loganalyzer.cli import entry

    entry(main)
