"""Generated secrets of every format ``loganalyzer.redact`` removes, planted in realistic log lines: the corpus of
the redaction tests and benchmark. Seeded, so every run plants the same values; none is a real credential."""

from __future__ import annotations

import base64
import json
import random
import string


def _rand(rng, n, alphabet=string.ascii_letters + string.digits):
    return "".join(rng.choice(alphabet) for _ in range(n))


def _b64url(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def planted_secrets(seed: int = 7) -> list[tuple[str, str, str]]:
    """``(type, secret, log line)``: one generated secret of every supported format inside a realistic log line
    (syslog, JSON, nginx access, log4j, klog, env dumps, curl traces). ``secret`` is what must not survive."""
    rng = random.Random(seed)
    up = string.ascii_uppercase + string.digits
    aws_id, aws_secret = "AKIA" + _rand(rng, 16, up), _rand(rng, 40, string.ascii_letters + string.digits + "/+")
    jwt = ".".join([_b64url({"alg": "HS256", "typ": "JWT"}), _b64url({"sub": "u-1", "exp": 1767225600}),
                    _rand(rng, 43, string.ascii_letters + string.digits + "_-")])
    basic = base64.b64encode(f"svc-backup:{_rand(rng, 12)}".encode()).decode()
    pem_body = [_rand(rng, 64, string.ascii_letters + string.digits + "+/") for _ in range(3)] + ["AbCd=="]
    pem = "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(pem_body) + "\n-----END RSA PRIVATE KEY-----"
    url_pw, kv_pw, json_pw = _rand(rng, 14) + "!x", _rand(rng, 10), _rand(rng, 18)
    rows = [
        ("AWS_KEY", aws_id, f"Mar  3 10:22:01 ip-10-0-3-7 cloud-init[1234]: using key {aws_id} for s3 sync"),
        ("AWS_KEY", aws_secret, f"2024-03-03 10:22:01,123 DEBUG [main] c.e.Env - aws_secret_access_key={aws_secret}"),
        ("GCP_API_KEY", gk := "AIza" + _rand(rng, 35, string.ascii_letters + string.digits + "_-"),
         f'{{"ts":"2024-03-03T10:22:01Z","level":"info","msg":"geocode","url":"https://maps.googleapis.com/api?key={gk}"}}'),
        ("GITHUB_TOKEN", gh := "ghp_" + _rand(rng, 36),
         f"I0303 10:22:01.123456       1 git.go:88] cloning with token {gh}"),
        ("GITHUB_TOKEN", ghf := "github_pat_" + _rand(rng, 82, string.ascii_letters + string.digits + "_"),
         f"runner[77]: GITHUB_TOKEN={ghf}"),
        ("GITLAB_TOKEN", gl := "glpat-" + _rand(rng, 20),
         f"2024-03-03 10:22:01 WARN gitlab auth header PRIVATE-TOKEN: {gl}"),
        ("SLACK_TOKEN", sl := f"xoxb-{rng.randint(10**10, 10**11)}-{rng.randint(10**10, 10**11)}-"
                             + _rand(rng, 24, string.ascii_lowercase + string.digits),
         f"notifier[901]: posting alert with {sl}"),
        ("SLACK_TOKEN", hook := f"https://hooks.slack.com/services/T{_rand(rng, 8, up)}/B{_rand(rng, 8, up)}/"
                               f"{_rand(rng, 24)}", f"alertmanager: webhook_url={hook} status=firing"),
        ("STRIPE_KEY", sk := "sk_live_" + _rand(rng, 24),
         f"payments-7d9f 2024-03-03T10:22:01Z ERROR stripe init key {sk}"),
        ("STRIPE_KEY", rk := "rk_test_" + _rand(rng, 30), f"[billing] restricted key loaded: {rk}"),
        ("OPENAI_KEY", oa := "sk-proj-" + _rand(rng, 48, string.ascii_letters + string.digits + "_-"),
         f"2024-03-03 10:22:01 INFO llm client configured api_key {oa}"),
        ("API_TOKEN", sg := f"SG.{_rand(rng, 22)}.{_rand(rng, 43)}", f"mailer[55]: sendgrid key={sg}"),
        ("API_TOKEN", tk := _rand(rng, 20, string.hexdigits.lower()) + "7",
         f'192.168.7.12 - - [03/Mar/2024:10:22:02 +0000] "GET /dl?file=a.tgz&token={tk} HTTP/1.1" 200 9'),
        ("JWT", jwt, f'10.1.2.3 - - [03/Mar/2024:10:22:01 +0000] "GET /api/v1/me?access_token={jwt} HTTP/1.1" 200 512'),
        ("AUTH_HEADER", bearer := _rand(rng, 32, string.ascii_letters + string.digits + "-._~"),
         f"curl: > Authorization: Bearer {bearer}"),
        ("AUTH_HEADER", basic, f"2024-03-03 10:22:01 DEBUG http.wire >> \"Authorization: Basic {basic}[\\r][\\n]\""),
        ("PRIVATE_KEY", pem_body[1], f"vault-agent[3]: rendered key:\n{pem}"),
        ("URL_PASSWORD", url_pw, f"2024-03-03 10:22:01 INFO db connecting to postgres://app_user:{url_pw}@db-0:5432/app"),
        ("PASSWORD", kv_pw, f"sshd-config[4]: LDAP bind ok user=svc password={kv_pw} retries=0"),
        ("PASSWORD", json_pw, f'{{"level":"debug","config":{{"client_secret": "{json_pw}", "timeout": 30}}}}'),
        ("PASSWORD", pw2 := _rand(rng, 12), f"app | 2024-03-03 10:22:01 | settings: DB_PASSWD: {pw2}"),
    ]
    from loganalyzer.redact import secret_types

    missing = set(secret_types()) - {t for t, _, _ in rows}
    if missing:
        raise AssertionError(f"no planted secret of type(s) {sorted(missing)}: add one here")
    return rows
