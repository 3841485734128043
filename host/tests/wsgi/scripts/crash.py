"""A C-level crash inside Python (a NULL read through ctypes): it must take down only its own
worker process and request (host/tests/wsgi.rs)."""
import ctypes


def application(environ, start_response):
    ctypes.string_at(0)
    start_response("200 OK", [])
    return [b"unreachable"]
