#!/usr/bin/python3
"""Docs in step with the code, in the spirit of systemd's check-directives.sh.

Reads from the daemon's sources:
  - every key of the policy file: the `.name` of each row of every
    `struct yaml_key NAME[]` table (gateway_keys, fuse_keys, policy_keys,
    account_keys, ha_keys, ...), and the policy kinds of `kind_names`;
  - every journal field: each C string literal that is exactly IVH_NAME;
  - every MESSAGE_ID: `#define MESSAGE_ID_... "<32 hex digits>"`;
  - every metric: each ivh_name in a string literal of daemon/metrics.c;
and checks that each is documented in the man pages (doc/*.scd; keys and
kinds in the key reference of ivh-reclaimd.yaml(5)). In reverse, every key
and kind the reference defines, every qualified key (gateway.X, ha.X,
accounts[].X, ...) named anywhere in the pages, every IVH_ field, every ivh_
metric and every MESSAGE_ID the pages name must exist in the code.

Plain python3, standard library only. Exit 0 when all agree, 1 on any
mismatch (each one printed), 2 on a usage or read error.

    tests/check-docs.py [--source-dir DIR] [-v]
"""

import argparse
import glob
import os
import re
import sys

KEY_PAGE = "doc/ivh-reclaimd.yaml.5.scd"
# The sections of the key reference whose definition terms are keys, and
# the one whose terms are the policy kinds.
KEY_SECTIONS = ("TOP LEVEL", "GATEWAY", "FUSE", "PROTECT", "POLICIES", "ACCOUNTS", "NOTIFY", "HA")
POLICY_SECTION = "POLICIES"
KINDS_SECTION = "POLICY KINDS"
# How the keys of a table are written in the reference. A table not named
# here is taken as the section "<base>" of "<base>_keys": "<base>.KEY".
TABLE_PREFIX = {
    "top_keys": "",
    "account_keys": "accounts[].",
    "policy_keys": None,  # unqualified, in the POLICIES section
}
# Fewer than these found in the code means the extraction broke (the code
# was reshaped), not that there is nothing to document.
MIN_FOUND = {"keys": 25, "kinds": 3, "fields": 30, "message ids": 5, "metrics": 10}

HEX32 = r"[0-9a-f]{32}"
FIELD_RE = re.compile(r"\bIVH_[A-Z0-9_]*[A-Z0-9]\b")
METRIC_RE = re.compile(r"\bivh_[a-z0-9_]*[a-z0-9]\b")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


class Problems:
    def __init__(self):
        self.items = []
        self.checks = 0

    def check(self, ok, message):
        self.checks += 1
        if not ok:
            self.items.append(message)


C_TOKEN_RE = re.compile(r'/\*.*?\*/|//[^\n]*|"((?:\\.|[^"\\\n])*)"|\'(?:\\.|[^\'\\\n])*\'', re.S)


def c_lex(text):
    """Yields ("code", text) and ("string", contents) pieces of C source,
    without comments; character literals count as code."""
    pos = 0
    for m in C_TOKEN_RE.finditer(text):
        tok = m.group(0)
        if tok.startswith("/"):
            yield ("code", text[pos:m.start()] + " ")
        elif tok.startswith('"'):
            yield ("code", text[pos:m.start()])
            yield ("string", m.group(1))
        else:
            yield ("code", text[pos:m.end()])
        pos = m.end()
    yield ("code", text[pos:])


def strip_comments(text):
    """The source with comments removed and string literals kept."""
    return "".join(p if kind == "code" else '"%s"' % p for kind, p in c_lex(text))


def string_literals(text):
    return [p for kind, p in c_lex(text) if kind == "string"]


def matching_brace(text, open_at):
    """Index just past the brace that closes the one at open_at (strings and
    comments already handled: text comes from strip_comments())."""
    depth, i, n = 0, open_at, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return n


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def table_rows(body):
    """The rows of a table's initializer body ("{ {...}, {...}, {} }")."""
    rows, depth, start = [], 0, None
    for i, ch in enumerate(body):
        if ch == "{":
            depth += 1
            if depth == 2:
                start = i
        elif ch == "}":
            if depth == 2 and start is not None:
                rows.append(body[start:i + 1])
            depth -= 1
    return rows


def code_keys(src):
    """{documented name: (file, table)} for every key of every yaml_key
    table, and the policy kinds {kind: file}."""
    keys, kinds = {}, {}
    table_re = re.compile(r"(?:static\s+)?const\s+struct\s+yaml_key\s+(\w+)\s*\[\s*\]\s*=\s*\{")
    for path in sorted(glob.glob(os.path.join(src, "daemon", "*.c"))):
        rel = os.path.relpath(path, src)
        text = strip_comments(read(path))
        for m in table_re.finditer(text):
            table = m.group(1)
            body = text[m.end() - 1:matching_brace(text, m.end() - 1)]
            if table in TABLE_PREFIX:
                prefix = TABLE_PREFIX[table]
            else:
                prefix = re.sub(r"_keys$", "", table) + "."
            for row in table_rows(body):
                m_name = re.search(r'\.name\s*=\s*"([^"]+)"', row)
                if not m_name or "YAML_T_INLINE" in row:
                    continue  # the end row, or an inline row (its name is no key)
                name = m_name.group(1)
                doc = ("policies[]." + name) if prefix is None else prefix + name
                keys[doc] = (rel, table)
                # A gateway key an account may set for itself (YAML_T_INLINE
                # in account_keys offers it as accounts[].KEY).
                if "YAML_K_ACCOUNT" in row:
                    keys["accounts[]." + name] = (rel, table)
        m = re.search(r"\bkind_names\s*\[\s*\]\s*=\s*\{", text)
        if m:
            body = text[m.end() - 1:matching_brace(text, m.end() - 1)]
            for name in re.findall(r'"([^"]+)"', body):
                kinds[name] = rel
    return keys, kinds


def code_fields(src):
    """{IVH_ field: file}, plus the prefixes of names built at run time
    ("IVH_ACCESS_TOKEN%s" allows IVH_ACCESS_TOKEN_*)."""
    fields, families = {}, set()
    for path in sorted(glob.glob(os.path.join(src, "daemon", "*.c"))):
        rel = os.path.relpath(path, src)
        for lit in string_literals(read(path)):
            if re.fullmatch(r"IVH_[A-Z0-9_]*[A-Z0-9]", lit):
                fields.setdefault(lit, rel)
            m = re.fullmatch(r"(IVH_[A-Z0-9_]*[A-Z0-9])%s", lit)
            if m:
                families.add(m.group(1) + "_")
                fields.setdefault(m.group(1), rel)
    return fields, families


def code_message_ids(src):
    ids = {}
    for path in sorted(glob.glob(os.path.join(src, "daemon", "*.[ch]"))):
        rel = os.path.relpath(path, src)
        for name, value in re.findall(r'#\s*define\s+(MESSAGE_ID_\w+)\s+"(%s)"' % HEX32, read(path)):
            ids[value] = (rel, name)
    return ids


def code_metrics(src):
    path = os.path.join(src, "daemon", "metrics.c")
    names = set()
    for lit in string_literals(read(path)):
        names.update(METRIC_RE.findall(lit))
    return {m for m in names if not (m.endswith(HISTOGRAM_SUFFIXES) and metric_base(m) in names)}


def metric_base(name):
    for s in HISTOGRAM_SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def man_text(text):
    """scdoc text with the escapes that split names undone (IVH\\_ -> IVH_)."""
    return text.replace("\\_", "_").replace("\\*", "*")


def sections(text):
    """[(section, [lines])] by "# " and "## " headers."""
    out, name, lines = [], "", []
    for line in text.splitlines():
        m = re.match(r"#{1,2} (.+)$", line)
        if m:
            out.append((name, lines))
            name, lines = m.group(1).strip(), []
        else:
            lines.append(line)
    out.append((name, lines))
    return out


def term_tokens(lines):
    """The *bold* names of the definition terms: a line at column 0 that
    starts with '*' and is followed by a tab-indented line."""
    tokens = []
    for i, line in enumerate(lines):
        if line.startswith("*") and i + 1 < len(lines) and lines[i + 1].startswith("\t"):
            tokens += re.findall(r"\*([A-Za-z_][A-Za-z0-9_.\[\]]*)\*", line)
    return tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."),
                    help="the source tree to check (default: the one this script is in)")
    ap.add_argument("-v", "--verbose", action="store_true", help="list what was found")
    args = ap.parse_args()
    src = os.path.abspath(args.source_dir)
    p = Problems()

    try:
        keys, kinds = code_keys(src)
        fields, families = code_fields(src)
        message_ids = code_message_ids(src)
        metrics = code_metrics(src)
        pages = {os.path.relpath(f, src): man_text(read(f))
                 for f in sorted(glob.glob(os.path.join(src, "doc", "*.scd")))}
        key_page = pages[KEY_PAGE]
    except (OSError, KeyError) as e:
        print("check-docs: cannot read the sources: %s" % e, file=sys.stderr)
        return 2

    for what, found in (("keys", keys), ("kinds", kinds), ("fields", fields),
                        ("message ids", message_ids), ("metrics", metrics)):
        p.check(len(found) >= MIN_FOUND[what],
                "daemon/: found only %d %s in the code (at least %d expected): "
                "has the code changed shape? Update tests/check-docs.py" % (len(found), what, MIN_FOUND[what]))
        if args.verbose:
            print("code %s (%d): %s" % (what, len(found), " ".join(sorted(found))))

    all_text = "\n".join(pages.values())
    doc_fields = set(FIELD_RE.findall(all_text))
    doc_metrics = set(METRIC_RE.findall(all_text))
    doc_ids = set(re.findall(r"MESSAGE_ID=(%s)" % HEX32, all_text))

    # The key reference: its definition terms, by section.
    by_section = {}
    for name, lines in sections(key_page):
        by_section.setdefault(name, []).extend(term_tokens(lines))
    for name in KEY_SECTIONS + (KINDS_SECTION,):
        p.check(name in by_section, "%s: no section '%s' (tests/check-docs.py reads the keys there)"
                % (KEY_PAGE, name))
    defined = set()  # as code_keys() names them
    where_defined = {}
    for name in KEY_SECTIONS:
        for tok in by_section.get(name, []):
            doc = "policies[]." + tok if name == POLICY_SECTION else tok
            defined.add(doc)
            where_defined[doc] = name
    doc_kinds = set(by_section.get(KINDS_SECTION, []))
    # Qualified keys named anywhere in the pages: gateway.url, ha.lease, accounts[].name ...
    prefixes = {k.rsplit(".", 1)[0] for k in keys if "." in k and not k.startswith("policies[].")}
    named = set()
    for page, text in pages.items():
        for tok in re.findall(r"\*([a-z_]+(?:\[\])?\.[a-z_]+)\*", text):
            if tok.rsplit(".", 1)[0] in prefixes:
                named.add((page, tok))
    # Message ids in the JOURNAL FIELDS terms (the "Other messages" list).
    for page, text in pages.items():
        for name, lines in sections(text):
            for i, line in enumerate(lines):
                m = re.match(r"\*(%s)\*" % HEX32, line)
                if m and i + 1 < len(lines) and lines[i + 1].startswith("\t"):
                    doc_ids.add(m.group(1))

    # Code -> docs.
    for key, (rel, table) in sorted(keys.items()):
        shown = key.replace("policies[].", "")
        p.check(key in defined, "%s: key '%s' of %s is not defined in %s (a '*%s*' term in section %s)"
                % (rel, shown, table, KEY_PAGE, shown, section_of(key)))
    for kind, rel in sorted(kinds.items()):
        p.check(kind in doc_kinds, "%s: policy kind '%s' is not defined in %s, section %s"
                % (rel, kind, KEY_PAGE, KINDS_SECTION))
    for field, rel in sorted(fields.items()):
        p.check(field in doc_fields, "%s: journal field or variable %s is not in the man pages (doc/*.scd)"
                % (rel, field))
    for mid, (rel, name) in sorted(message_ids.items()):
        p.check(mid in all_text, "%s: %s (%s) is not in the man pages (doc/*.scd)" % (rel, name, mid))
    for metric in sorted(metrics):
        p.check(metric in doc_metrics, "daemon/metrics.c: metric %s is not in the man pages (doc/*.scd)" % metric)

    # Docs -> code.
    for key in sorted(defined):
        shown = key.replace("policies[].", "")
        p.check(key in keys, "%s: section %s defines key '%s', which no yaml_key table in daemon/*.c has"
                % (KEY_PAGE, where_defined[key], shown))
    for kind in sorted(doc_kinds):
        p.check(kind in kinds, "%s: section %s defines kind '%s', which kind_names in daemon/*.c lacks"
                % (KEY_PAGE, KINDS_SECTION, kind))
    for page, tok in sorted(named):
        if page == KEY_PAGE and tok in defined:
            continue  # reported above when wrong
        p.check(tok in keys, "%s: names key '%s', which no yaml_key table in daemon/*.c has" % (page, tok))
    for field in sorted(doc_fields):
        ok = field in fields or any(field.startswith(f) for f in families)
        p.check(ok, "%s: names %s, which no string in daemon/*.c is" % (pages_with(pages, field, FIELD_RE), field))
    for metric in sorted(doc_metrics):
        ok = metric in metrics or metric_base(metric) in metrics
        p.check(ok, "%s: names metric %s, which daemon/metrics.c does not write"
                % (pages_with(pages, metric, METRIC_RE), metric))
    for mid in sorted(doc_ids):
        p.check(mid in message_ids, "%s: names MESSAGE_ID %s, which no MESSAGE_ID_ define in daemon/ has"
                % (pages_with(pages, mid, re.compile(HEX32)), mid))

    for item in p.items:
        print("check-docs: " + item)
    print("check-docs: %d checks, %d mismatches (%d keys, %d kinds, %d fields, %d message ids, %d metrics)"
          % (p.checks, len(p.items), len(keys), len(kinds), len(fields), len(message_ids), len(metrics)))
    return 1 if p.items else 0


def section_of(key):
    """The section of the key reference a key belongs in."""
    if key.startswith("policies[]."):
        return POLICY_SECTION
    if key.startswith("accounts[]."):
        return "ACCOUNTS"
    if "." in key:
        return key.split(".")[0].upper()
    return "TOP LEVEL"


def pages_with(pages, token, regex):
    return ", ".join(page for page, text in pages.items() if token in regex.findall(text)) or "doc/*.scd"


if __name__ == "__main__":
    sys.exit(main())
