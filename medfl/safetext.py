r"""Untrusted text made safe for a log line or a terminal, and the rule for a node's name.

Anything a peer sends (an agent's name, a refusal reason, an error message) may reach the
coordinator's log and the operator's terminal. A newline in it would forge a log line; an ANSI
escape sequence would reach the terminal and could rewrite what the operator sees; a Unicode
bidirectional override would reorder a fingerprint on screen. :func:`escape` makes such text
inert: every control, format and separator character is written as a visible escape
(``\\n``, ``\\x1b``, ``\\u202e``), backslashes are doubled so an escape cannot be forged, and the
result is capped in length. :func:`check_name` is the stricter rule for names an operator
reads in ``nodes list``: NFKC-normalised, printable, at most :data:`NAME_MAX` characters.

References
----------
.. [1] ECMA-48, "Control Functions for Coded Character Sets" (the C0/C1 controls and CSI).
.. [2] Unicode Standard Annex #9, "Unicode Bidirectional Algorithm" (explicit overrides).
.. [3] Unicode Standard Annex #15, "Unicode Normalization Forms" (NFKC).
.. [4] CWE-117, "Improper Output Neutralization for Logs".
"""

from __future__ import annotations

import unicodedata

__all__ = ["NAME_MAX", "check_name", "escape", "fold_name"]

#: the longest node name accepted, in characters after NFKC normalisation
NAME_MAX = 64

_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _unsafe(ch: str) -> bool:
    # Cc controls, Cf format (bidi overrides, zero-width), Cs surrogates, Co private use,
    # Cn unassigned, Zl/Zp line and paragraph separators
    return unicodedata.category(ch)[0] == "C" or unicodedata.category(ch) in ("Zl", "Zp")


def escape(text: object, *, limit: int = 200) -> str:
    """Return ``text`` as one inert line: unsafe characters escaped, at most ``limit`` characters kept.

    Parameters
    ----------
    text : object
        Anything; non-strings are converted with ``str``.
    limit : int
        How many characters of the input to keep; the rest is replaced by a count.

    Returns
    -------
    str
        A string with no control, format or separator characters, safe to log or print.

    References
    ----------
    .. [1] CWE-117, "Improper Output Neutralization for Logs".
    """
    s = text if isinstance(text, str) else str(text)
    out: list[str] = []
    for ch in s[:limit]:
        if ch in _SHORT:
            out.append(_SHORT[ch])
        elif _unsafe(ch):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    if len(s) > limit:
        out.append(f"...(+{len(s) - limit} chars)")
    return "".join(out)


def check_name(raw: object) -> tuple[str, str | None]:
    """Normalise a node name and say what is wrong with it, if anything.

    Parameters
    ----------
    raw : object
        The name as received.

    Returns
    -------
    tuple[str, str | None]
        The NFKC-normalised, stripped name, and ``None`` when it is acceptable or the reason
        it is not (quoting the offending value escaped).

    References
    ----------
    .. [1] Unicode Standard Annex #15, "Unicode Normalization Forms" (NFKC).
    """
    if not isinstance(raw, str):
        return "", f"must be a string, got {type(raw).__name__}"
    name = unicodedata.normalize("NFKC", raw).strip()
    if not name:
        return name, "must not be empty"
    if len(name) > NAME_MAX:
        return name, f"must be at most {NAME_MAX} characters, got {len(name)}"
    bad = sorted({ch for ch in name if _unsafe(ch)})
    if bad:
        shown = ", ".join(escape(ch) for ch in bad[:5])
        return name, f"must be printable: {escape(name, limit=80)!r} contains control or format characters ({shown})"
    return name, None


def fold_name(name: str) -> str:
    """The form two names are compared in: NFKC, case-folded, inner whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())
