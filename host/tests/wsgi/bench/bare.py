"""The smallest WSGI application: what the bridge costs without a framework (scripts/bench-wsgi)."""


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return [b"Hello, world!\n"]
