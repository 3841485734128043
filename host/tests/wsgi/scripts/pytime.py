"""The WSGI tutorials' first application: the time, as text (served at /pytime.py)."""
import time


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [time.ctime().encode() + b"\n"]
