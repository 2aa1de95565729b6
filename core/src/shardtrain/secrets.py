"""What counts as a credential: the one rule for every value that leaves the process.

A training spec becomes a Ray job's entrypoint (shown on the dashboard), a job target's
``runtime_env`` is shown there too, and a model's params and source go into its manifest, its
``ModelArtifact`` (XCom, Prefect results), lineage facets, MLflow and log lines. Each of those
places asks this module, so that a name refused in one is refused (or masked) in all, instead
of each keeping its own list that drifts (``aws_session_token`` was refused by one and shown by
another).

The rule looks at names part by part (split on ``_``, ``-``, ``.``, spaces and camelCase:
``awsSecretAccessKey`` is ``aws secret access key``), so that ``api_key``, ``WANDB_API_KEY``
and ``apiKey`` are one case, while the hyper-parameters of XGBoost, LightGBM and PyTorch
(``max_bin``, ``eval_metric``, ``label_key``, ``pad_token_id``) are never taken for one: a
refused hyper-parameter would be a bug. Values are checked for the few shapes a credential
has whatever it is called: a URL's ``user:password@``, a signed URL's signature, a bearer
header, a PEM private key, an AWS access key id, a GitHub or Hugging Face token, and
``AccountKey=...`` pairs of a connection string.

Specs and job targets refuse (``refuse_secrets``); records, lineage and logs mask
(``redact``, ``redact_text``).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

from shardtrain.errors import ConfigError, redact_url

#: What a masked value reads.
MASK = "***"

#: A name with a part containing one of these (``PGPASSWORD``, ``credentials``) is a credential.
SECRET_WORDS = ("password", "passwd", "passphrase", "credential")
#: Parts that are a credential by themselves (``sas_url``, ``SENTRY_DSN``, ``gcp_creds``),
#: and the ending of one (``clientsecret``; not ``secretary``).
SECRET_PARTS = frozenset(
    {"secret", "secrets", "creds", "cookie", "cookies", "authorization", "sas", "dsn"}
)
SECRET_ENDINGS = ("secret", "secrets")
#: Whole names that hold credentials: fsspec's ``key`` (with ``secret``/``token``), and the
#: ``storage_options`` dict that carries them.
SECRET_NAMES = frozenset({"key", "storage_options"})
#: ``<qualifier>_key`` is a credential (``api_key``, ``account_key``); any other ``*_key``
#: (``label_key``, ``sort_key``, ``primary_key``) is not.
KEY_QUALIFIERS = frozenset(
    {
        "access", "account", "api", "app", "application", "auth", "client", "consumer",
        "decryption", "encryption", "hmac", "license", "master", "private", "sas", "secret",
        "service", "session", "shared", "signing", "ssh", "ssl", "storage", "subscription",
        "tls",
    }
)  # fmt: skip
#: ``<word>_token`` ending a name is a credential (``hf_token``, ``aws_session_token``)
#: unless the word makes it a tokenizer's token (``eos_token``, ``pad_token``).
TEXT_TOKEN_WORDS = frozenset(
    {
        "additional", "audio", "begin", "bos", "cls", "decoder", "encoder", "end", "eos",
        "first", "image", "img", "last", "mask", "max", "min", "n", "new", "next", "num",
        "pad", "padding", "per", "prev", "sep", "sos", "special", "start", "stop", "unk",
        "video", "vision",
    }
)  # fmt: skip
#: Query parameters of a signed URL that carry its signature (Azure SAS ``sig``, S3's
#: ``X-Amz-Signature``, GCS's ``X-Goog-Signature``), beside secret-named ones (``token``).
QUERY_SIGNATURES = frozenset({"sig", "signature"})

_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
_URL_USERINFO = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^/@\s'\"]*:[^/@\s'\"]*@")
_QUERY_PAIR = re.compile(r"(?<=[?&])([^=&#\s'\"]+)=([^&#\s'\"]*)")
_BEARER = re.compile(r"\b(Bearer|bearer|BEARER)\s+([A-Za-z0-9\-._~+/]{8,}=*)")
_BASIC = re.compile(r"\b(Basic|basic|BASIC)\s+([A-Za-z0-9+/]{4,}={0,2})(?![A-Za-z0-9+/=])")
_PEM = re.compile(
    r"-----BEGIN ([A-Z0-9]+ )*PRIVATE KEY-----(?:.*?-----END ([A-Z0-9]+ )*PRIVATE KEY-----)?",
    re.S,
)
_TOKENS = re.compile(
    r"\b(?:(?:AKIA|ASIA)[A-Z0-9]{16}"  # AWS access key ids
    r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,}"  # GitHub tokens
    r"|hf_[A-Za-z0-9]{30,})\b"  # Hugging Face tokens
)
#: ``name=value`` (connection strings, env assignments, query strings) and ``'name': value``
#: (JSON, a dict's repr): the value is masked where the name is a credential's.
_VALUE = r"""('[^']*'|"[^"]*"|[^\s&;,'"()\[\]{}]+)"""
_ASSIGNED = re.compile(r"(?<![\w.-])([A-Za-z_][\w.-]*)(\s*=\s*)" + _VALUE)
_QUOTED = re.compile(r"""(['"])([^'"\s]+)\1(\s*:\s*)""" + _VALUE)


def name_parts(name: Any) -> list[str]:
    """The lowercase words of a name: ``awsSecretAccessKey`` -> aws, secret, access, key."""
    return [p.lower() for p in _PART.findall(str(name))]


def is_secret_name(name: Any) -> bool:
    """True when a key or variable of this name holds a credential (see the module docstring)."""
    parts = name_parts(name)
    if not parts:
        return False
    if "_".join(parts) in SECRET_NAMES:
        return True
    for i, part in enumerate(parts):
        before = parts[i - 1] if i else ""
        last = i == len(parts) - 1
        if part in SECRET_PARTS or part.endswith(SECRET_ENDINGS):
            return True
        if any(word in part for word in SECRET_WORDS):
            return True
        if part == "key" and before in KEY_QUALIFIERS:
            return True
        if any(part == q + "key" for q in KEY_QUALIFIERS):  # apikey, accountkey
            return True
        if part.endswith("token") and last:
            prefix = part[: -len("token")] or before  # authtoken, or auth_token
            if prefix not in TEXT_TOKEN_WORDS:
                return True
        if part in ("auth", "oauth") and last:  # basic_auth; not auth_type
            return True
        if part == "pwd" and len(parts) > 1:  # db_pwd; not PWD, the working directory
            return True
        if part in ("str", "string") and before in ("conn", "connection"):
            return True
        if part in ("connstr", "connectionstring"):
            return True
    return False


def _is_assigned_secret(name: str) -> bool:
    """A secret-named setting of a ``name=value`` string (``PWD=`` is a password there)."""
    return is_secret_name(name) or name_parts(name) == ["pwd"]


def _basic_credentials(encoded: str) -> bool:
    try:
        decoded = base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return False
    return ":" in decoded and decoded.isprintable()


def _is_query_secret(name: str) -> bool:
    parts = name_parts(name)
    return is_secret_name(name) or bool(parts and parts[-1] in QUERY_SIGNATURES)


def secret_value_kind(value: Any) -> str | None:
    """What kind of credential a string value carries (for messages that must not quote
    it), or None."""
    if not isinstance(value, str):
        return None
    if _URL_USERINFO.search(value):
        return "a URL with a user:password@"
    if "://" in value and any(
        _is_query_secret(name) and secret for name, secret in _QUERY_PAIR.findall(value)
    ):
        return "a signed URL"
    if _PEM.search(value):
        return "a private key"
    if _BEARER.search(value) or any(_basic_credentials(m[1]) for m in _BASIC.findall(value)):
        return "an Authorization header value"
    if _TOKENS.search(value):
        return "an access key or token"
    for name, _, assigned in _ASSIGNED.findall(value):
        if _is_assigned_secret(name) and assigned.strip("'\"") not in ("", MASK):
            return f"the setting {name}="
    return None


def looks_like_secret_value(value: Any) -> bool:
    """True for a string that carries a credential whatever its key is called."""
    return secret_value_kind(value) is not None


def _findings(obj: Any, path: str) -> list[tuple[str, str]]:
    if isinstance(obj, Mapping):
        found = []
        for key, item in obj.items():
            shown = redact_text(key) if isinstance(key, str) else key
            where = f"{path}[{shown!r}]"
            if is_secret_name(key):
                found.append((where, "a credential's name"))
            elif secret_value_kind(key):
                found.append((where, f"a key that is {secret_value_kind(key)}"))
            else:
                found += _findings(item, where)
        return found
    if isinstance(obj, list | tuple):
        return [f for i, item in enumerate(obj) for f in _findings(item, f"{path}[{i}]")]
    kind = secret_value_kind(obj)
    return [(path, kind)] if kind else []


def find_secrets(obj: Any, path: str = "") -> list[str]:
    """The paths (``params['aws']['password']``) of the entries of ``obj`` (nested dicts and
    lists) that are credentials by their name or their value."""
    return [where for where, _ in _findings(obj, path)]


def refuse_secrets(obj: Any, what: str) -> None:
    """ConfigError naming every credential in ``obj`` (by its path, never its value) and
    saying how to pass it instead; nothing when there is none."""
    found = _findings(obj, what)
    if not found:
        return
    named = "; ".join(f"{where} ({kind})" for where, kind in found)
    raise ConfigError(
        f"{what} holds what looks like a credential: {named}. A spec or a job never holds "
        "secrets: what it holds is shown to anyone who can read the Ray dashboard (a job's "
        "entrypoint, runtime_env and metadata), the model's manifest or its lineage. Give "
        "credentials where they stay private instead: the cluster's own environment (its "
        "pods' environment, an instance role, a connections.toml there), a named connection "
        "(the Airflow `ray` or `snowflake` connection, a Prefect block, a spec's "
        "snowflake_connection), or at run time as run_training's storage_options= or "
        "session=.",
        keys=[where for where, _ in found],
    )


def redact_text(text: Any) -> str:
    """``text`` (a log line, an error, a value) with every credential it carries masked:
    URL user info removed, signatures, tokens, keys and secret-named settings as ``***``."""
    text = redact_url(str(text))
    text = _QUERY_PAIR.sub(
        lambda m: f"{m[1]}={MASK}" if _is_query_secret(m[1]) and m[2] else m[0], text
    )
    text = _PEM.sub(MASK, text)
    text = _BEARER.sub(lambda m: f"{m[1]} {MASK}", text)
    text = _BASIC.sub(lambda m: f"{m[1]} {MASK}" if _basic_credentials(m[2]) else m[0], text)
    text = _TOKENS.sub(MASK, text)

    def masked(value: str) -> str:
        quote = value[0] if value[:1] in ("'", '"') else ""
        return f"{quote}{MASK}{quote}"

    text = _ASSIGNED.sub(
        lambda m: f"{m[1]}{m[2]}{masked(m[3])}" if _is_assigned_secret(m[1]) else m[0], text
    )
    return _QUOTED.sub(
        lambda m: f"{m[1]}{m[2]}{m[1]}{m[3]}{masked(m[4])}" if is_secret_name(m[2]) else m[0],
        text,
    )


def redact(obj: Any, *, drop: bool = False) -> Any:
    """A copy of ``obj`` (nested dicts, lists, tuples, strings) fit to show anywhere: the value
    of every secret-named key is ``***`` (or, with ``drop``, the key is left out) and every
    string goes through ``redact_text``. Redacting twice gives the same."""
    if isinstance(obj, Mapping):
        out = {}
        for key, item in obj.items():
            if is_secret_name(key):
                if not drop:
                    out[key] = MASK
            else:
                out[key] = redact(item, drop=drop)
        return out
    if isinstance(obj, list):
        return [redact(item, drop=drop) for item in obj]
    if isinstance(obj, tuple):
        return tuple(redact(item, drop=drop) for item in obj)
    if isinstance(obj, str):
        return redact_text(obj)
    return obj


__all__ = [
    "MASK",
    "find_secrets",
    "is_secret_name",
    "looks_like_secret_value",
    "name_parts",
    "redact",
    "redact_text",
    "refuse_secrets",
    "secret_value_kind",
]
