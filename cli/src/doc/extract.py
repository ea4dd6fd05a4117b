# moat: read the command docs of MicroPython app modules on the host.
#
# Run by `moat build` (and `moat doc` for uploaded sources) with CPython:
# the real Python parser (`ast`, `tokenize`) reads what MicroPython drops
# (docstrings, comments), so nothing of it costs the node a byte.
#
#   python3 extract.py NAME=PATH ...   ->  one JSON object on stdout:
#   {NAME: {"doc": str|null, "classes": {CLASS: {"doc", "bases", "cmds",
#   "subs"}}} | {"error": str}}
#
# A class is kept when it has `cmd_*`/`stream_*` methods or sub-apps. A
# command merges `cmd_X` and `stream_X`: {"doc", "params": [[name,
# default source or null]], "kw": name of **kw or null, "cmd": has cmd_X,
# "stream": has stream_X, "async"}. A native stream's `send` and `r` are
# not parameters. Sub-apps: `self.apps = {"k": Class(...)}` literals and
# `if key == "k": return Class(...)` in `sub()`. Class names (bases, subs)
# are resolved through the module's `from M import N` to "M.N", else
# "THIS.N".
import ast
import io
import json
import sys
import tokenize


def comments(text):
    # line -> (comment text, alone on its line)
    out = {}
    try:
        for t in tokenize.generate_tokens(io.StringIO(text).readline):
            if t.type == tokenize.COMMENT:
                alone = not t.line[: t.start[1]].strip()
                out[t.start[0]] = (t.string[1:].strip(), alone)
    except (tokenize.TokenError, SyntaxError):
        pass
    return out


def clean(s):
    s = (s or "").strip()
    return s or None


def lead(node, cm):
    # docstring, else the comments between the header and the first statement
    d = ast.get_docstring(node)
    if d:
        return clean(d)
    first = node.body[0].lineno if node.body else node.lineno + 1
    lines = [cm[n][0] for n in range(node.lineno, first) if n in cm]
    return clean("\n".join(lines))


def module_doc(tree, text, cm):
    d = ast.get_docstring(tree)
    if d:
        return clean(d)
    lines = []
    for n in range(1, len(text.splitlines()) + 1):
        c = cm.get(n)
        if c is None or not c[1]:
            break
        lines.append(c[0])
    return clean("\n".join(lines))


def src(text, node):
    s = ast.get_source_segment(text, node)
    return s if s is not None else ast.unparse(node)


def params(text, f, skip):
    a = f.args
    pos = a.posonlyargs + a.args
    defs = [None] * (len(pos) - len(a.defaults)) + list(a.defaults)
    out = []
    for p, d in list(zip(pos, defs))[skip:]:
        out.append([p.arg, None if d is None else src(text, d)])
    for p, d in zip(a.kwonlyargs, a.kw_defaults):
        out.append([p.arg, None if d is None else src(text, d)])
    if a.vararg is not None:
        out.append(["*" + a.vararg.arg, None])
    return out, (a.kwarg.arg if a.kwarg is not None else None)


def extract(name, text):
    tree = ast.parse(text)
    cm = comments(text)
    names = {}
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.module and not n.level:
            for al in n.names:
                names[al.asname or al.name] = n.module + "." + al.name
    local = {c.name for c in tree.body if isinstance(c, ast.ClassDef)}

    def ref(n):
        if isinstance(n, ast.Name):
            if n.id in local:
                return name + "." + n.id
            return names.get(n.id, n.id)
        if isinstance(n, ast.Attribute):
            return src(text, n)
        return None

    classes = {}
    for c in tree.body:
        if not isinstance(c, ast.ClassDef):
            continue
        cmds = {}
        subs = {}
        for f in c.body:
            if not isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for pre, stream in (("cmd_", False), ("stream_", True)):
                if not f.name.startswith(pre) or len(f.name) == len(pre):
                    continue
                k = f.name[len(pre):]
                # self; a native stream also takes send and r
                ps, kw = params(text, f, 3 if stream else 1)
                e = cmds.setdefault(k, {"doc": None, "params": [], "kw": None,
                                        "cmd": False, "stream": False, "async": False})
                e["stream" if stream else "cmd"] = True
                if not stream or not e["cmd"]:
                    e["params"], e["kw"] = ps, kw
                    e["async"] = isinstance(f, ast.AsyncFunctionDef)
                d = lead(f, cm)
                if d and (not stream or not e["doc"]):
                    e["doc"] = d
            for n in ast.walk(f):
                # self.apps = {"k": Class(...)}
                if isinstance(n, ast.Assign) and isinstance(n.value, ast.Dict):
                    t = n.targets[0]
                    if isinstance(t, ast.Attribute) and t.attr == "apps":
                        for k, v in zip(n.value.keys, n.value.values):
                            if isinstance(k, ast.Constant) and isinstance(v, ast.Call):
                                r = ref(v.func)
                                if r:
                                    subs[k.value] = r
                # in sub(): if key == "k": ... return Class(...)
                if f.name == "sub" and isinstance(n, ast.If):
                    t = n.test
                    if (isinstance(t, ast.Compare) and len(t.ops) == 1
                            and isinstance(t.ops[0], ast.Eq)
                            and isinstance(t.comparators[0], ast.Constant)):
                        for m in ast.walk(ast.Module(body=n.body, type_ignores=[])):
                            if isinstance(m, ast.Return) and isinstance(m.value, ast.Call):
                                r = ref(m.value.func)
                                if r:
                                    subs[t.comparators[0].value] = r
                                break
        if not cmds and not subs:
            continue
        classes[c.name] = {
            "doc": lead(c, cm),
            "bases": [b for b in map(ref, c.bases) if b],
            "cmds": cmds,
            "subs": subs,
        }
    return {"doc": module_doc(tree, text, cm), "classes": classes}


def main():
    out = {}
    for arg in sys.argv[1:]:
        name, path = arg.split("=", 1)
        try:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8")
            out[name] = extract(name, text)
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError) as e:
            out[name] = {"error": "%s: %s" % (type(e).__name__, e)}
    json.dump(out, sys.stdout)


main()
