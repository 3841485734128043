"""PEP 3333 corner by corner, one PATH_INFO each (host/tests/wsgi.rs)."""
import json
import sys

STASHED = []
CLOSED = {"n": 0}


class Counted:
    """An iterable with close(), to count that the server calls it."""

    def __init__(self, chunks, fail=False):
        self.chunks, self.fail = chunks, fail

    def __iter__(self):
        for c in self.chunks:
            yield c
        if self.fail:
            raise RuntimeError("failed mid-body")

    def close(self):
        CLOSED["n"] += 1


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/environ":
        keys = {k: v for k, v in environ.items() if isinstance(v, (str, bool, int, tuple))}
        keys["portico.raw_headers"] = environ["portico.raw_headers"]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(keys).encode()]
    if path == "/input":
        inp = environ["wsgi.input"]
        first = inp.readline()
        two = inp.read(2)
        lines = inp.readlines()
        start_response("200 OK", [("Content-Type", "application/json")])
        out = {"first": first.decode("latin-1"), "two": two.decode("latin-1"), "rest": [l.decode("latin-1") for l in lines]}
        return [json.dumps(out).encode()]
    if path == "/iterate":
        n = sum(1 for _ in environ["wsgi.input"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"%d lines" % n]
    if path == "/errors":
        print("line one\nline two", file=environ["wsgi.errors"])
        environ["wsgi.errors"].write("\x1b[31mred\n")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"logged"]
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        return [b"and returned"]
    if path == "/generator":
        def gen():
            start_response("201 Created", [("Content-Type", "text/plain"), ("X-Late", "yes")])
            yield b""
            yield b"late "
            yield b"head"
        return gen()
    if path == "/exc-before":
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("oops")
        except ValueError:
            start_response("500 Oops", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"replaced"]
    if path == "/exc-after":
        def gen():
            start_response("200 OK", [("Content-Type", "text/plain")])
            yield b"partial"
            try:
                raise ValueError("too late")
            except ValueError:
                start_response("500 Oops", [("Content-Type", "text/plain")], sys.exc_info())
            yield b"never"
        return gen()
    if path == "/second-call":
        start_response("200 OK", [])
        start_response("200 OK", [])
        return [b"unreachable"]
    if path == "/bad-header":
        start_response("200 OK", [("X-Bad", "a\r\nInjected: yes")])
        return [b"no"]
    if path == "/hop":
        start_response("200 OK", [("Connection", "close")])
        return [b"no"]
    if path == "/write-exc":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"half a page ")
        try:
            raise ValueError("changed my mind")
        except ValueError:
            start_response("500 Oops", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"error page"]
    if path == "/space-header":
        start_response("200 OK", [("Set-Cookie", " a=b; Path=/"), ("Content-Type", "text/plain")])
        return [b"ok"]
    if path == "/str-body":
        start_response("200 OK", [])
        return ["not bytes"]
    if path == "/close":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Counted([b"a", b"b"])
    if path == "/close-fail":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Counted([b"a", b"b"], fail=True)
    if path == "/closed":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(CLOSED["n"]).encode()]
    if path == "/stash":
        STASHED[:] = [start_response, environ["wsgi.input"], environ["wsgi.errors"]]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"stashed"]
    if path == "/use-stashed":
        results = []
        for name, call in [("start_response", lambda: STASHED[0]("200 OK", [])),
                           ("input", lambda: STASHED[1].read()),
                           ("errors", lambda: STASHED[2].write("late\n"))]:
            try:
                call()
                results.append(f"{name}: no error")
            except Exception as e:  # noqa: BLE001 - the test reports any type
                results.append(f"{name}: {type(e).__name__}")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return ["\n".join(results).encode()]
    if path == "/file":
        f = open(__file__, "rb")
        f.seek(3)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return environ["wsgi.file_wrapper"](f, 4096)
    if path == "/raise":
        raise KeyError("an exception before start_response")
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"no such corner\n"]
