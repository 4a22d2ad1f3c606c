#!/usr/bin/env python3
"""Generates the README's reference section from reactor.hpp.

    python3 tests/gen_reference.py           rewrite README.md in place
    python3 tests/gen_reference.py --check   exit 1 if README.md is stale

Every public class and struct of the public namespaces (reactor, and its
irc, task, testing, policies, error, defer and ssl namespaces; the inline namespace, v0,
spelled REACTOR_ABI in the header, is left out of the names), with its
public member functions, constructors and
data members, and the free functions, aliases, enums and constants at
namespace scope. Each row links to its declaration line and is described by
the first sentence of its `///` comment (or a trailing `///<`). Anything in
a `detail` namespace, and private or protected members, are left out.

The header is read by a small scanner, not a compiler: comments, string and
character literals (raw strings too) are blanked before braces are counted,
only the first branch of each #if/#ifdef is read (as if every condition
held), and function bodies and brace initializers are skipped by brace
depth. Public members without a `///` comment are listed on stderr.

The generated text goes between `<!-- reference:begin -->` and
`<!-- reference:end -->` in README.md. Python 3 standard library only.
"""

import argparse
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = "reactor.hpp"
README = "README.md"
BEGIN = "<!-- reference:begin -->"
END = "<!-- reference:end -->"
PUBLIC_NAMESPACES = {"reactor", "reactor::irc", "reactor::task", "reactor::testing", "reactor::policies",
                     "reactor::error", "reactor::defer", "reactor::ssl"}
INLINE_NAMESPACES = {"v0", "REACTOR_ABI"}
MAX_ROWS = 700

KEYWORDS_BEFORE_PAREN = {"decltype", "alignas", "sizeof", "noexcept", "alignof", "__attribute__",
                         "static_assert", "requires"}


# ---------------------------------------------------------------------------
# 1. Cleaning: blank comments and literals, keep offsets and line breaks.
# ---------------------------------------------------------------------------

def clean_source(src):
    """Returns (code, nocomment, comments).

    code: comments blanked and literal contents blanked (quotes kept), so
    braces can be counted. nocomment: comments blanked, literals kept, for
    rendering signatures. comments: {line: [(col, text)]} of `//` comments.
    All three keep the offsets of `src`.
    """
    code = list(src)
    nocom = list(src)
    comments = {}
    n = len(src)
    i = 0
    line = 1

    def blank(buf, a, b):
        for k in range(a, b):
            if buf[k] != "\n":
                buf[k] = " "

    while i < n:
        c = src[i]
        if c == "\n":
            line += 1
            i += 1
        elif src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            col = i - (src.rfind("\n", 0, i) + 1)
            comments.setdefault(line, []).append((col, src[i:j]))
            blank(code, i, j)
            blank(nocom, i, j)
            i = j
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            j = n if j < 0 else j + 2
            line += src.count("\n", i, j)
            blank(code, i, j)
            blank(nocom, i, j)
            i = j
        elif c == '"':
            # Raw string: R"delim( ... )delim", with an optional u8/u/U/L prefix.
            m = re.search(r"(?:u8|u|U|L)?R$", src[max(0, i - 3):i])
            before = i - (len(m.group(0)) if m else 0) - 1
            if m and (before < 0 or not (src[before].isalnum() or src[before] == "_")):
                p = src.find("(", i)
                delim = src[i + 1:p]
                j = src.find(")" + delim + '"', p)
                j = n if j < 0 else j + len(delim) + 2
                line += src.count("\n", i, j)
                blank(code, i + 1, j - 1)
                i = j
                continue
            j = i + 1
            while j < n and src[j] != '"':
                if src[j] == "\\":
                    j += 1
                elif src[j] == "\n":  # unterminated (only in a #error, say)
                    break
                j += 1
            blank(code, i + 1, j)
            i = j + 1
        elif c == "'":
            # A digit separator (1'000'000) is not a character literal.
            m = re.search(r"[\w.]+$", src[max(0, i - 40):i])
            if m and m.group(0)[0].isdigit():
                i += 1
                continue
            j = i + 1
            while j < n and src[j] != "'":
                if src[j] == "\\":
                    j += 1
                elif src[j] == "\n":
                    break
                j += 1
            blank(code, i + 1, j)
            i = j + 1
        else:
            i += 1
    return "".join(code), "".join(nocom), comments


def strip_preprocessor(code, nocom, comments):
    """Blanks directives, and every #else/#elif branch (the first branch of
    each conditional is read, as if its condition held). Comments on blanked
    branch lines are dropped too."""
    lines = code.split("\n")
    nlines = nocom.split("\n")
    stack = []  # per open #if: True while in its first branch
    cont = False
    for idx, text in enumerate(lines):
        s = text.strip()
        directive = cont or s.startswith("#")
        if directive and not cont:
            word = re.match(r"#\s*(\w*)", s).group(1)
            if word in ("if", "ifdef", "ifndef"):
                stack.append(True)
            elif word in ("else", "elif", "elifdef", "elifndef"):
                if stack:
                    stack[-1] = False
            elif word == "endif":
                if stack:
                    stack.pop()
        inactive = not all(stack)
        if directive or inactive:
            lines[idx] = " " * len(text)
            nlines[idx] = " " * len(nlines[idx])
            if inactive and not directive:
                comments.pop(idx + 1, None)
        cont = directive and text.rstrip().endswith("\\")
    return "\n".join(lines), "\n".join(nlines)


# ---------------------------------------------------------------------------
# 2. Small helpers on cleaned text.
# ---------------------------------------------------------------------------

def match_close(text, i, open_ch, close_ch):
    """Index of the bracket closing the one at text[i]."""
    depth = 0
    for j in range(i, len(text)):
        if text[j] == open_ch:
            depth += 1
        elif text[j] == close_ch:
            depth -= 1
            if depth == 0:
                return j
    return len(text) - 1


def match_angle(text, i):
    """Index of the '>' closing the '<' at text[i] (parens respected)."""
    depth = 0
    j = i
    while j < len(text):
        ch = text[j]
        if ch == "(":
            j = match_close(text, j, "(", ")")
        elif ch == "<":
            depth += 1
        elif ch == ">" and text[j - 1] != "-":
            depth -= 1
            if depth == 0:
                return j
        j += 1
    return len(text) - 1


def strip_template_prefix(text):
    """Splits leading `template <...>` clauses off. Returns (params, rest)
    where params is the text of the first clause (or None)."""
    params = None
    while True:
        m = re.match(r"\s*template\s*<", text)
        if not m:
            return params, text
        lt = m.end() - 1
        gt = match_angle(text, lt)
        if params is None:
            params = text[lt + 1:gt]
        text = text[gt + 1:]


def _op_char(ch):
    return "\ue020" if ch.isspace() else chr(0xE000 + ord(ch))


def normalize_operators(text):
    """Turns `operator==`, `operator()`, `operator bool` into one word of the
    same length, so that their '=', '<' and parens do not confuse the
    classification (offsets are kept)."""
    def repl(m):
        return "operator" + "".join(_op_char(ch) for ch in m.group(0)[len("operator"):])
    return re.sub(r"\boperator\s*(\(\)|\[\]|co_await\b|new\b|delete\b|[^\w\s(]+|[\w:\s*&<>]+?(?=\s*\())",
                  repl, text)


def denormalize(text):
    return "".join(chr(ord(ch) - 0xE000) if "\ue000" <= ch <= "\ue0ff" else ch for ch in text)


def depth0_chars(text, end=None):
    """Yields (index, char) for every character outside (), [], {} and
    template <>, other than those brackets themselves, before `end`."""
    depth = angle = 0
    prev = ""
    for i in range(len(text) if end is None else end):
        ch = text[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "<" and depth == 0 and re.match(r"[\w:>]", prev or " "):
            angle += 1
        elif ch == ">" and depth == 0 and angle > 0 and prev != "-":
            angle -= 1
        elif depth == 0 and angle == 0:
            yield i, ch
        if not ch.isspace():
            prev = ch


def split_top(text, sep=","):
    """Splits on `sep` outside (), [], {} and template <>."""
    cuts = [i for i, ch in depth0_chars(text) if ch == sep]
    starts = [0] + [i + 1 for i in cuts]
    ends = cuts + [len(text)]
    return [text[a:b] for a, b in zip(starts, ends)]


def first_top_paren(text):
    """Index of the first '(' at depth 0 outside template brackets whose
    preceding word is not a keyword such as decltype, or -1."""
    angle = 0
    i = 0
    prev = ""
    while i < len(text):
        ch = text[i]
        if ch == "<" and re.match(r"[\w:>]", prev or " "):
            angle += 1
        elif ch == ">" and angle > 0 and prev != "-":
            angle -= 1
        elif ch in "[{":
            i = match_close(text, i, ch, "]" if ch == "[" else "}")
        elif ch == "(":
            word = re.search(r"(\w+)\s*$", text[:i])
            if angle == 0 and not (word and word.group(1) in KEYWORDS_BEFORE_PAREN):
                return i
            i = match_close(text, i, "(", ")")
        if not ch.isspace():
            prev = ch
        i += 1
    return -1


def top_level_index(text, ch_set, limit=None):
    """First index of a character of ch_set at depth 0 (outside (), [], {},
    and template brackets), before `limit`."""
    return next((i for i, ch in depth0_chars(text, limit) if ch in ch_set), -1)


def squash(text):
    return re.sub(r"\s+", " ", text).strip()


# ---------------------------------------------------------------------------
# 3. The scanner.
# ---------------------------------------------------------------------------

class Scope:
    def __init__(self, kind, name, ns, public, access="public", template=None, start=0):
        self.kind = kind          # "ns" or "class"
        self.name = name          # namespace or class name
        self.ns = ns              # namespace path, e.g. ["reactor", "irc"]
        self.public = public      # visible from outside (no detail, no private)
        self.access = access      # current access inside a class
        self.template = template
        self.start = start
        self.entity = None        # the class entity, for classes


class Entity:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class Header:
    def __init__(self, src):
        self.src = src
        code, nocom, self.comments = clean_source(src)
        self.code, self.nocom = strip_preprocessor(code, nocom, self.comments)
        self.line_starts = [0]
        for m in re.finditer("\n", src):
            self.line_starts.append(m.end())
        self.raw_lines = src.split("\n")
        self.entities = []
        self.sections = []  # (line, title)
        for ln, text in enumerate(self.raw_lines, 1):
            m = re.match(r"\s*//\s*====\s*(\d+[a-z]?)\.\s*(.*?)\s*====\s*$", text)
            if m:
                self.sections.append((ln, m.group(1), m.group(2)))

    # -- positions and comments ---------------------------------------------

    def line_of(self, offset):
        lo, hi = 0, len(self.line_starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.line_starts[mid] <= offset:
                lo = mid
            else:
                hi = mid - 1
        return lo + 1

    def doc_above(self, line):
        """The `///` block right above `line` (a list of text lines)."""
        out = []
        ln = line - 1
        while ln >= 1:
            found = None
            for col, text in self.comments.get(ln, []):
                before = self.raw_lines[ln - 1][:col]
                if before.strip() == "" and text.startswith("///") and not text.startswith("////") \
                        and not text.startswith("///<"):
                    found = text[3:]
            if found is None:
                break
            out.append(found)
            ln -= 1
        return list(reversed(out))

    def doc_trailing(self, first, last):
        for ln in range(first, last + 1):
            for col, text in self.comments.get(ln, []):
                if text.startswith("///<"):
                    return [text[4:]]
        return []

    def section_of(self, line):
        cur = None
        for ln, num, title in self.sections:
            if ln <= line:
                cur = (num, title)
        return cur

    # -- the walk ---------------------------------------------------------------

    def scan(self):
        code = self.code
        n = len(code)
        root = Scope("ns", "", [], True)
        stack = [root]
        i = 0
        stmt = 0
        while i < n:
            ch = code[i]
            top = stack[-1]
            if ch == "(":
                i = match_close(code, i, "(", ")") + 1
                continue
            if ch == ";":
                self.statement(stack, stmt, i, None)
                i += 1
                stmt = i
                continue
            if ch == ":" and top.kind == "class":
                word = code[stmt:i].strip()
                if word in ("public", "private", "protected") and code[i + 1:i + 2] != ":":
                    top.access = word
                    i += 1
                    stmt = i
                    continue
            if ch == "}":
                scope = stack.pop() if len(stack) > 1 else root
                if scope.kind == "class" and scope.entity is not None:
                    scope.entity.end_line = self.line_of(i)
                i += 1
                stmt = i
                continue
            if ch == "{":
                header = code[stmt:i]
                action = self.classify_brace(header)
                if action[0] == "ns":
                    names = [x for x in action[1].split("::") if x] or ["<anon>"]
                    for name in names:
                        ns = top.ns + ([] if name in INLINE_NAMESPACES else [name])
                        public = top.public and name != "detail" and name != "<anon>"
                        stack.append(Scope("ns", name, ns, public))
                        top = stack[-1]
                    # a multi-part namespace closes with one brace: fold it
                    if len(names) > 1:
                        inner = stack.pop()
                        for _ in names[1:]:
                            stack.pop()
                        stack.append(inner)
                    i += 1
                    stmt = i
                    continue
                if action[0] == "class":
                    _, keyword, name, template = action
                    access = "public" if keyword in ("struct", "union") else "private"
                    visible = top.public and (top.kind == "ns" or top.access == "public")
                    scope = Scope("class", name, top.ns, visible, access, template, i)
                    scope.entity = self.record_class(stack, stmt, i, keyword, name, template, visible)
                    stack.append(scope)
                    i += 1
                    stmt = i
                    continue
                close = match_close(code, i, "{", "}")
                if action[0] == "function":
                    self.statement(stack, stmt, i, close)
                    i = close + 1
                    stmt = i
                    continue
                # an initializer or enum body: part of the statement
                i = close + 1
                continue
            i += 1
        return self.entities

    def classify_brace(self, header):
        h = header.strip()
        m = re.match(r"^(?:inline\s+)?namespace\s*([\w:]*)\s*$", h)
        if m:
            return ("ns", m.group(1))
        if re.match(r'^extern\s+"', h):
            return ("ns", "")
        template, rest = strip_template_prefix(h)
        rest = rest.strip()
        if re.match(r"^enum\b", rest):
            return ("init",)
        m = re.match(r"^(class|struct|union)\s+(?:\[\[[^\]]*\]\]\s*)?(\w+)?", rest)
        if m and first_top_paren(rest.split(":")[0]) < 0:
            return ("class", m.group(1), m.group(2) or "<anon>", template)
        norm = normalize_operators(rest)
        p = first_top_paren(norm)
        if p < 0:
            return ("init",)
        eq = top_level_index(norm, "=", p)
        if eq >= 0:
            return ("init",)
        # `Foo() : a_{1}, b_(2) {`: braces of a constructor's init list.
        close = match_close(norm, p, "(", ")")
        tail = norm[close + 1:]
        m = re.search(r"(?<!:):(?!:)", tail)
        if m and re.search(r"[\w>]\s*$", norm) and not re.search(
                r"\b(const|override|final|noexcept|mutable)\s*$", norm):
            init = tail[m.end():]
            if re.search(r"[\w>]\s*$", init) and not init.rstrip().endswith(")"):
                return ("init",)
        return ("function",)

    # -- records --------------------------------------------------------------

    def visible_in(self, stack):
        top = stack[-1]
        if not top.public:
            return False
        if top.kind == "class" and top.access != "public":
            return False
        if "::".join(top.ns) not in PUBLIC_NAMESPACES:
            return False
        return True

    def first_code_offset(self, a, b):
        m = re.search(r"\S", self.code[a:b])
        return a + m.start() if m else None

    def describe(self, start_line, end_line):
        doc = self.doc_above(start_line)
        trailing = self.doc_trailing(start_line, end_line)
        return doc or trailing

    def record_class(self, stack, a, b, keyword, name, template, visible):
        top = stack[-1]
        if not visible or "::".join(top.ns) not in PUBLIC_NAMESPACES or name == "<anon>":
            return None
        off = self.first_code_offset(a, b)
        start_line = self.line_of(off)
        m = re.search(r"\b%s\b\s+%s\b" % (keyword, re.escape(name)), self.code[off:b])
        name_line = self.line_of(off + m.start()) if m else start_line
        outer = [s.name for s in stack if s.kind == "class"]
        bases = ""
        head = squash(self.nocom[off:b])
        mb = re.search(r"\b%s\b(?:\s+final)?\s*:(?!:)(.*)$" % re.escape(name), head)
        if mb:
            bases = mb.group(1).strip()
        ent = Entity(kind="class", keyword=keyword, name=name, outer=outer, ns=top.ns,
                     template=template, line=name_line, doc=self.describe(start_line, start_line),
                     bases=bases, members=[], end_line=None, raw=head)
        self.entities.append(ent)
        return ent

    def statement(self, stack, a, b, body_close):
        """A declaration from code[a:b]; body_close is the index of the body's
        closing brace for a function definition."""
        top = stack[-1]
        off = self.first_code_offset(a, b)
        if off is None:
            return
        text = self.code[off:b]
        template, rest = strip_template_prefix(text)
        rest_off = b - len(rest)
        lead = len(rest) - len(rest.lstrip())
        rest_off += lead
        rest = rest.strip()
        if not rest:
            return
        start_line = self.line_of(off)
        end_line = self.line_of(body_close if body_close is not None else b)
        decl_end_line = self.line_of(b)
        # Macro-declared error classes: REACTOR_ERROR_CLASS(Name, Parent, "message");
        m = re.match(r"^REACTOR_ERROR_CLASS\s*\(", rest)
        if m:
            if self.visible_in(stack):
                close = match_close(self.nocom, rest_off + m.end() - 1, "(", ")")
                args = split_top(self.nocom[rest_off + m.end():close])
                args = [squash(x) for x in args]
                self.entities.append(Entity(kind="error", name=args[0], parent=args[1], message=args[2],
                                            ns=top.ns, outer=[], line=self.line_of(rest_off),
                                            doc=self.describe(start_line, decl_end_line)))
            return
        if not self.visible_in(stack):
            return
        if re.match(r"^(static_assert|namespace|using\s+namespace|friend\s+(class|struct)|"
                    r"(class|struct|union|enum)\b[^{(]*$)", rest):
            return
        is_friend = False
        if rest.startswith("friend "):
            is_friend = True
            rest = rest[len("friend "):].lstrip()
            rest_off = b - len(self.code[off:b]) + self.code[off:b].index(rest)
        doc = self.describe(start_line, decl_end_line)
        in_class = top.kind == "class"
        outer = [s.name for s in stack if s.kind == "class"]
        owner = top.entity if in_class else None
        if in_class and owner is None:
            return
        common = dict(ns=top.ns, outer=outer, doc=doc, owner=owner, template=template)

        m = re.match(r"^using\s+(\w+)\s*=", rest)
        if m:
            if in_class and not doc:
                return  # member type aliases are listed only when documented
            self.add(Entity(kind="alias", name=m.group(1), line=self.line_of(rest_off + m.start(1)),
                            sig="", **common))
            return
        if rest.startswith("using ") or rest.startswith("typedef "):
            return
        m = re.match(r"^enum\s+(?:class\s+|struct\s+)?(\w+)", rest)
        if m:
            self.add(Entity(kind="enum", name=m.group(1), line=self.line_of(rest_off + m.start(1)),
                            sig="", **common))
            return

        norm = normalize_operators(rest)
        p = first_top_paren(norm)
        eq = top_level_index(norm, "=", p if p >= 0 else None) if p >= 0 else -1
        if p >= 0 and eq < 0:
            before = norm[:p]
            mname = re.search(r"(~?[\w:\ue000-\ue0ff]*[\w\ue000-\ue0ff])\s*$", before)
            if not mname:
                return
            qname = mname.group(1)
            if "::" in qname:
                return  # an out-of-line definition of a member
            name = re.sub(r"\s+", " ", denormalize(qname)).strip()
            name = re.sub(r"^operator (?=\W)", "operator", name)
            if name.startswith("~"):
                return
            close = match_close(norm, p, "(", ")")
            after = norm[close + 1:]
            if re.search(r"=\s*(delete|default)\b", after):
                return
            # the parameters, from the text with literals kept (same offsets)
            src_p = rest_off + p
            src_close = match_close(self.nocom, src_p, "(", ")")
            params = self.nocom[src_p + 1:src_close]
            kind = "function"
            if in_class and name == owner.name:
                kind = "constructor"
            elif not in_class:
                kind = "free"
            pure = bool(re.search(r"=\s*0\s*$", after.strip()))
            name_line = self.line_of(rest_off + mname.start(1))
            self.add(Entity(kind=kind, name=name, line=name_line, params=params, friend=is_friend,
                            override=bool(re.search(r"\boverride\b", after)),
                            pure=pure, static=bool(re.match(r"^(inline\s+)?static\b", rest)), **common))
            return
        # a variable / data member
        cut = top_level_index(norm.replace("::", "\ue000\ue000"), "={[:")
        head = norm if cut < 0 else norm[:cut]
        mname = re.search(r"(\w+)\s*$", head)
        if not mname:
            return
        init = ""
        if cut >= 0 and norm[cut] in "={":
            init = squash(self.nocom[rest_off + cut:b])
            if init.startswith("="):
                init = init[1:].strip()
        self.add(Entity(kind="data", name=mname.group(1), line=self.line_of(rest_off + mname.start(1)),
                        init=init, static=bool(re.search(r"\bstatic\b", head)), **common))

    def add(self, ent):
        if ent.owner is not None:
            ent.owner.members.append(ent)
        else:
            self.entities.append(ent)


# ---------------------------------------------------------------------------
# 4. Rendering.
# ---------------------------------------------------------------------------

def first_sentence(doc_lines):
    if not doc_lines:
        return ""
    para = []
    for ln in doc_lines:
        t = ln.strip()
        if not t:
            if para:
                break
            continue
        if ln.startswith("    ") and para:  # an indented example: end of the prose
            break
        para.append(t)
    text = " ".join(para)
    ticks = parens = 0
    for i, ch in enumerate(text):
        if ch == "`":
            ticks += 1
        elif ticks % 2 == 0 and ch in "([":
            parens += 1
        elif ticks % 2 == 0 and ch in ")]":
            parens = max(0, parens - 1)
        if ch in ".!?" and ticks % 2 == 0 and parens == 0 and text[i - 1:i] != "." \
                and (i + 1 == len(text) or text[i + 1] == " "):
            head = text[:i + 1]
            if re.search(r"\b(e\.g|i\.e|etc|vs)\.$", head):
                continue
            return head
    return text


def cell(text):
    """Markdown for a table cell: code spans kept as they are (only '|'
    escaped), the prose around them escaped so that `<tag>`, `\\` and `*`
    read as written."""
    out = []
    for k, piece in enumerate(re.split(r"(`[^`]*`)", text)):
        if k % 2:
            out.append(piece.replace("|", "\\|"))
        else:
            piece = piece.replace("\\", "\\\\").replace("*", "\\*").replace("_", "\\_")
            out.append(piece.replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|"))
    return "".join(out)


def template_names(template):
    """[(name, default)] of the type parameters of a template clause."""
    out = []
    if template is None:
        return out
    for part in split_top(template):
        m = re.match(r"\s*(?:class|typename)\s*(?:\.\.\.\s*)?(\w+)\s*(?:=\s*(.*))?$", part.strip(), re.S)
        if m:
            out.append((m.group(1), (m.group(2) or "").strip()))
    return out


def compact_params(params):
    out = []
    if not params.strip() or params.strip() == "void":
        return ""
    for part in split_top(params):
        p = squash(part)
        if not p:
            continue
        eq = top_level_index(p, "=")
        left, default = (p, "") if eq < 0 else (p[:eq].strip(), p[eq + 1:].strip())
        # Types are kept: a reader writing an override needs them exactly.
        name = left.replace("detail::", "")
        if len(default) > 24:
            default = "…"  # long defaults are in the header
        out.append(name + (" = " + default if default else ""))
    return ", ".join(out)


def explicit_template_args(ent):
    names = template_names(ent.template)
    shown = []
    for name, default in names:
        if re.search(r"\b%s\b" % re.escape(name), ent.params):
            continue
        if default and default != "void":
            continue  # defaulted (often a SFINAE helper): not one to spell out
        shown.append(name)
    return "<%s>" % ", ".join(shown) if shown else ""


def display_ns(ns):
    rel = [x for x in ns[1:]] if ns and ns[0] == "reactor" else ns
    return "::".join(rel)


def qualified(ent, name=None):
    parts = [display_ns(ent.ns)] if display_ns(ent.ns) else []
    parts += ent.outer
    parts.append(name or ent.name)
    return "::".join(parts)


def link(label, line):
    return "[`%s`](%s#L%d)" % (label.replace("|", "\\|"), HEADER, line)


class Report:
    def __init__(self, header):
        self.h = header
        self.undocumented = []
        self.rows = 0

    def note(self, what, ent):
        self.undocumented.append("%s:%d: %s" % (HEADER, ent.line, what))

    def member_rows(self, cls, drop_undocumented_data):
        groups = {}
        order = []
        for m in cls.members:
            key = (m.kind if m.kind in ("data", "alias", "enum") else "fn", m.name)
            if key not in groups:
                groups[key] = []
                order.append(key)
            groups[key].append(m)
        rows = []
        for key in order:
            ents = groups[key]
            first = ents[0]
            docs = []
            for e in ents:
                d = first_sentence(e.doc)
                if d and d not in docs:
                    docs.append(d)
            doc = "<br>".join(cell(d) for d in docs)
            if not doc and key[0] == "fn" and all(getattr(e, "override", False) for e in ents):
                inherited = self.inherited_doc(cls, first.name)
                if inherited:
                    doc = cell(inherited) + " (override)"
            if not doc:
                self.note("%s::%s" % (qualified(cls), first.name), first)
                if key[0] == "data" and drop_undocumented_data:
                    continue
            if key[0] == "fn":
                sigs = []
                seen = set()
                for e in ents:
                    targs = explicit_template_args(e)
                    s = "%s%s(%s)" % (e.name, targs, compact_params(e.params))
                    if e.static:
                        s = "static " + s
                    if s not in seen:
                        seen.add(s)
                        sigs.append((s, e.line))
                if len(sigs) > 4:
                    member = link("%s(...)" % first.name, first.line) + " (%d overloads)" % len(sigs)
                else:
                    member = "<br>".join(link(s, ln) for s, ln in sigs)
                    distinct = len({squash(e.params) for e in ents})
                    if distinct > len(sigs):
                        member += " (%d overloads)" % distinct
            elif key[0] == "data":
                label = first.name
                if first.init and len(first.init) <= 32 and "[" not in first.init:
                    label += " = " + first.init
                if first.static:
                    label = "static " + label
                member = link(label, first.line)
            else:
                member = link(first.name, first.line) + " (%s)" % ("type" if key[0] == "alias" else "enum")
            rows.append("| %s | %s |" % (member, doc if doc else "—"))
        return rows

    def inherited_doc(self, cls, name, depth=0):
        """The first sentence documenting `name` in a base class of `cls`."""
        if depth > 8:
            return ""
        for base in re.findall(r"(?:public\s+|protected\s+|private\s+|virtual\s+)*([\w:]+)(?:<[^{]*?>)?\s*(?:,|$)",
                               cls.bases or ""):
            base = base.split("::")[-1]
            for ent in self.h.entities:
                if ent.kind == "class" and ent.name == base:
                    for m in ent.members:
                        if m.name == name and m.doc:
                            return first_sentence(m.doc)
                    found = self.inherited_doc(ent, name, depth + 1)
                    if found:
                        return found
        return ""

    def class_title(self, cls):
        names = [n for n, _ in template_names(cls.template)]
        label = qualified(cls) + ("<%s>" % ", ".join(names) if names else "")
        return label

    def is_error_class(self, cls):
        return re.match(r"(public\s+)?ErrorType<", cls.bases or "") is not None

    def render(self, drop_undocumented_data=False):
        h = self.h
        self.undocumented = []
        by_section = {}
        section_order = []
        for ent in h.entities:
            sec = h.section_of(ent.line) or ("0", "top")
            if sec not in by_section:
                by_section[sec] = []
                section_order.append(sec)
            by_section[sec].append(ent)
        out = []
        rows = 0
        for sec in section_order:
            num, title = sec
            words = title.split()
            pretty = " ".join(w if len(w) <= 3 else w.capitalize() for w in words)
            out.append("### %s. %s" % (num, pretty))
            out.append("")
            ents = by_section[sec]
            free = [e for e in ents if e.kind in ("free", "alias", "enum", "data")]
            errors = [e for e in ents if e.kind == "error" or (e.kind == "class" and self.is_error_class(e))]
            classes = [e for e in ents if e.kind == "class" and e not in errors]
            if free:
                out.append("| function, type or constant | description |")
                out.append("|---|---|")
                groups = {}
                order = []
                for e in free:
                    key = (display_ns(e.ns), e.name, e.kind == "free")
                    if key not in groups:
                        groups[key] = []
                        order.append(key)
                    groups[key].append(e)
                for key in order:
                    es = groups[key]
                    first = es[0]
                    doc = next((first_sentence(e.doc) for e in es if e.doc), "")
                    if not doc:
                        self.note(qualified(first), first)
                    if first.kind == "free":
                        sigs, seen = [], set()
                        for e in es:
                            s = "%s%s(%s)" % (qualified(e), explicit_template_args(e), compact_params(e.params))
                            if s not in seen:
                                seen.add(s)
                                sigs.append((s, e.line))
                        member = "<br>".join(link(s, ln) for s, ln in sigs)
                    elif first.kind == "data":
                        label = qualified(first)
                        if first.init and len(first.init) <= 32:
                            label += " = " + first.init
                        member = link(label, first.line)
                    else:
                        member = link(qualified(first), first.line) + (" (type)" if first.kind == "alias" else " (enum)")
                    out.append("| %s | %s |" % (member, cell(doc) if doc else "—"))
                    rows += 1
                out.append("")
            if errors:
                out.append("| error | description |")
                out.append("|---|---|")
                for e in errors:
                    if e.kind == "error":
                        parent, message = e.parent, e.message
                        doc = first_sentence(e.doc)
                        extra = []
                    else:
                        mp = re.search(r"ErrorType<\s*\w+\s*,\s*([\w:]+)\s*>", e.bases)
                        parent = mp.group(1) if mp else "Error"
                        ctor = next((m for m in e.members if m.kind == "constructor"), None)
                        mm = re.search(r'=\s*("(?:[^"\\]|\\.)*")', ctor.params) if ctor else None
                        message = mm.group(1) if mm else ""
                        doc = first_sentence(e.doc)
                        if not doc:
                            self.note(qualified(e), e)
                        extra = [m for m in e.members if m.kind == "data" and m.name != "typeName"]
                    desc = doc + (" " if doc else "") + "Derives from `%s`" % parent
                    desc += ("; default message %s." % message) if message else "."
                    out.append("| %s | %s |" % (link(qualified(e), e.line), cell(desc)))
                    rows += 1
                    for m in extra:
                        d = first_sentence(m.doc)
                        if not d:
                            self.note("%s::%s" % (qualified(e), m.name), m)
                        out.append("| %s | %s |" % (link("%s::%s" % (qualified(e), m.name), m.line),
                                                    cell(d) if d else "—"))
                        rows += 1
                out.append("")
            for cls in classes:
                title = self.class_title(cls)
                doc = first_sentence(cls.doc)
                if not doc:
                    self.note(qualified(cls), cls)
                desc = doc
                out.append("| member | description |")
                out.append("|---|---|")
                out.append("| **%s** (%s) | %s |" % (link(title, cls.line), cls.keyword, cell(desc) if desc else "—"))
                rows += 1
                mrows = self.member_rows(cls, drop_undocumented_data)
                out.extend(mrows)
                rows += len(mrows)
                out.append("")
        self.rows = rows
        while out and out[-1] == "":
            out.pop()
        return "\n".join(out)


def generate(src):
    h = Header(src)
    h.scan()
    rep = Report(h)
    text = rep.render()
    if rep.rows > MAX_ROWS:
        text = rep.render(drop_undocumented_data=True)
    return text, rep


SELF_TEST_HEADER = r"""
// ==== 1. ONE ====
namespace reactor {
inline namespace v0 {
namespace detail { struct Hidden { void no(); }; }
/// A colour.
enum class Colour { red, green };
/// Text with braces.
inline const char* braces() { return "}{"; }
/// A raw string.
constexpr const char* raw = R"x(} " { )x";
/// A widget.
class Widget {
    int privateByDefault;
public:
    /// Makes one.
    Widget() : a_{1}, b_(2) {}
    Widget(const Widget&) = delete;
    ~Widget() {}
    /// Compares.
    friend bool operator==(const Widget& a, const Widget& b) { return a.a_ == b.a_; }
    explicit operator bool() const { return true; }
    /// Brace chars.
    char open() const { return '{'; }
#if defined(SOMETHING)
    /// First branch.
    void first() { if (x) {
#else
    void second() { if (y) {
#endif
    } }
    /// A callback with a lambda in its default.
    std::function<int()> f = [] { return 1; };  ///< trailing wins not
    int value = 3;  ///< a value
    /// Template.
    template <class T, class U = int>
    static Widget make(U u = {});
    inline void later();
private:
    struct Slot { int x; };
    int a_, b_;
};
inline void Widget::later() {}
}  // namespace v0
}  // namespace reactor
"""


def self_test():
    h = Header(SELF_TEST_HEADER)
    h.scan()
    rep = Report(h)
    text = rep.render()
    expect = ["[`Colour`](reactor.hpp#L7) (enum) | A colour.", "`braces()`", "`raw = R\"x(} \" { )x\"`", "**[`Widget`]",
              "`Widget()`](reactor.hpp#L17) | Makes one.", "`operator==(const Widget& a, const Widget& b)`", "`operator bool()`",
              "`open()`", "`first()`", "[`f`](reactor.hpp#L33) | A callback", "`value = 3`](reactor.hpp#L34) | a value",
              "`static make<T>(U u = {})`", "`later()`"]
    absent = ["Hidden", "second", "Slot", "privateByDefault", "a_", "~Widget", "Widget(a", "no()"]
    bad = [e for e in expect if e not in text] + ["unexpected: " + a for a in absent if a in text]
    if bad:
        print(text, file=sys.stderr)
        print("gen_reference self-test FAILED:\n  " + "\n  ".join(bad), file=sys.stderr)
        return 1
    print("gen_reference: self-test passed")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md's reference block is stale")
    ap.add_argument("--quiet", action="store_true", help="do not list undocumented members")
    ap.add_argument("--self-test", action="store_true", help="check the scanner on a tricky snippet")
    args = ap.parse_args()
    if args.self_test:
        return self_test()
    with open(os.path.join(ROOT, HEADER), encoding="utf-8") as f:
        src = f.read()
    # Section 15 holds the bodies of functions documented where they are
    # declared; the reference stops at its banner.
    impl = re.search(r"^// ==== \d+\. IMPLEMENTATION ====$", src, re.M)
    if impl:
        src = src[:impl.start()]
    readme_path = os.path.join(ROOT, README)
    with open(readme_path, encoding="utf-8") as f:
        readme = f.read()
    if args.check and self_test() != 0:
        return 1
    body, rep = generate(src)
    if not args.quiet and rep.undocumented:
        print("gen_reference: %d public members without a /// comment:" % len(rep.undocumented), file=sys.stderr)
        for u in rep.undocumented:
            print("  " + u, file=sys.stderr)
    b = readme.find(BEGIN)
    e = readme.find(END)
    if b < 0 or e < b:
        print("gen_reference: %s has no %s ... %s block" % (README, BEGIN, END), file=sys.stderr)
        return 2
    block = BEGIN + "\n<!-- generated by tests/gen_reference.py from reactor.hpp; do not edit by hand -->\n\n" \
        + body + "\n\n"
    new = readme[:b] + block + readme[e:]
    if args.check:
        if new != readme:
            print("gen_reference: the reference section of %s is stale (reactor.hpp changed).\n"
                  "Run `python3 tests/gen_reference.py` and commit README.md." % README, file=sys.stderr)
            return 1
        print("gen_reference: %s reference is up to date (%d rows)" % (README, rep.rows))
        return 0
    if new != readme:
        with open(readme_path, "w", encoding="utf-8") as f:
            f.write(new)
        print("gen_reference: rewrote the reference in %s (%d rows)" % (README, rep.rows))
    else:
        print("gen_reference: %s already up to date (%d rows)" % (README, rep.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
