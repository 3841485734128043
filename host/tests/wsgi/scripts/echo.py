"""The conformance corpus's echo contract (shared/conformance/README.md) in Python: the
request as the server parsed it, as JSON, like plugins/echo. Header fields come from the
server-defined `portico.raw_headers` (in order, repeats kept), which PEP 3333's HTTP_*
variables cannot give."""
import base64
import json


def application(environ, start_response):
    body = environ["wsgi.input"].read()
    length = environ.get("CONTENT_LENGTH")
    doc = {
        "method": environ["REQUEST_METHOD"],
        "script_name": environ["SCRIPT_NAME"],
        "path_info": environ["PATH_INFO"],
        "query_string": environ["QUERY_STRING"],
        "protocol": environ["SERVER_PROTOCOL"],
        "headers": [[n.lower(), v] for n, v in environ["portico.raw_headers"]],
        "body_b64": base64.b64encode(body).decode(),
        "remote_addr": environ["REMOTE_ADDR"],
        "remote_port": int(environ["REMOTE_PORT"]),
        "server_name": environ["SERVER_NAME"],
        "server_port": int(environ["SERVER_PORT"]),
        "url_scheme": environ["wsgi.url_scheme"],
        "content_type": environ.get("CONTENT_TYPE", ""),
        "content_length": int(length) if length else None,
    }
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(doc).encode() + b"\n"]
