"""A real Flask application, served unchanged by the wsgi plugin (host/tests/wsgi.rs)."""
import hashlib
import os

from flask import Flask, Response, abort, jsonify, request, send_file, url_for

app = Flask(__name__)
HERE = os.path.dirname(os.path.abspath(__file__))


@app.route("/")
def index():
    return f"Hello from Flask at {url_for('index')} <script>"


@app.route("/hello")
def hello():
    return "Hello, World!"


@app.route("/json")
def as_json():
    return jsonify(a=request.args.get("a"), url=url_for("as_json", _external=False),
                   multiprocess=request.environ["wsgi.multiprocess"],
                   multithread=request.environ["wsgi.multithread"])


@app.route("/form", methods=["POST"])
def form():
    return jsonify(dict(request.form))


@app.route("/upload", methods=["POST"])
def upload():
    f = request.files["file"]
    data = f.read()
    return jsonify(name=f.filename, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                   note=request.form.get("note"))


@app.route("/stream")
def stream():
    def generate():
        for i in range(3):
            yield f"chunk {i}\n"
    return Response(generate(), mimetype="text/plain")


@app.route("/file")
def file():
    return send_file(os.path.join(HERE, "flaskapp.py"), mimetype="text/plain")


@app.route("/sleep")
def sleep():
    import time
    time.sleep(float(request.args.get("s", "1")))
    return "slept"


@app.route("/teapot")
def teapot():
    abort(418)


@app.route("/boom")
def boom():
    raise RuntimeError("boom from a Flask view")
