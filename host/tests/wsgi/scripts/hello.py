"""Hidden by the compiled hello plugin: /hello.py must never answer this."""


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"the Python hello script\n"]
