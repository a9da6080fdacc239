"""A local Google Cloud Storage for tests: `gcp-storage-emulator` on 127.0.0.1, and every library we reach gs://
through pointed at it by a setting that library reads.

* TensorStore (Orbax's array store): `TENSORSTORE_GCS_HTTP_URL`, its own emulator endpoint.
* google-cloud-storage and gcsfs (where installed; etils' fsspec backend): `STORAGE_EMULATOR_HOST`.
* TensorFlow's file system (`tf.io.gfile`: etils.epath, TFDS, SeqIO, TensorBoard summaries) has no endpoint
  setting: its GCS client always calls https://www.googleapis.com and https://storage.googleapis.com. It does
  read libcurl's `https_proxy`, `CURL_CA_BUNDLE` and `GOOGLE_AUTH_TOKEN_FOR_TESTING`, so a forwarding proxy here
  accepts its CONNECT, ends TLS with a certificate for those two hosts signed by a throwaway CA, and relays the
  plain requests to the emulator.

`python tests/gcs_emulator.py --port P --proxy_port Q --cert C --key K` runs both servers in a child process (so
no request waits on the test process's GIL); `start(folder)` launches it and returns a `FakeGcs`.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http
import importlib.util
import json
import os
import pathlib
import select
import shutil
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from typing import Iterator

HOSTS = ("www.googleapis.com", "storage.googleapis.com")
TOKEN = "emulator-token"  # any bearer token: the emulator checks none


@dataclasses.dataclass
class FakeGcs:
  """A running emulator: `endpoint` is its plain HTTP address, `env` the settings that point the libraries at it."""

  endpoint: str
  env: dict[str, str]
  process: subprocess.Popen

  def create_bucket(self, name: str) -> str:
    """Creates bucket `name`; returns `gs://name`."""
    request = urllib.request.Request(f"{self.endpoint}/storage/v1/b", data=f'{{"name": "{name}"}}'.encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with _direct().open(request, timeout=30) as response:
      response.read()
    return f"gs://{name}"

  def upload(self, local: pathlib.Path, url: str) -> None:
    """Copies file or folder `local` to `url` (gs://bucket/name) straight into the emulator."""
    bucket, _, name = url[len("gs://"):].partition("/")
    files = [(local, name)] if local.is_file() else [
        (p, f"{name}/{p.relative_to(local).as_posix()}") for p in sorted(local.rglob("*")) if p.is_file()]
    for path, object_name in files:
      query = urllib.parse.urlencode({"uploadType": "media", "name": object_name})
      request = urllib.request.Request(f"{self.endpoint}/upload/storage/v1/b/{bucket}/o?{query}",
                                       data=path.read_bytes(), method="POST",
                                       headers={"Content-Type": "application/octet-stream"})
      with _direct().open(request, timeout=30) as response:
        response.read()

  def objects(self, bucket: str, prefix: str = "") -> list[str]:
    """Every object name in `bucket` under `prefix`, asked of the emulator directly (no library in between)."""
    names, token = [], ""
    while True:
      query = urllib.parse.urlencode({"prefix": prefix, **({"pageToken": token} if token else {})})
      with _direct().open(f"{self.endpoint}/storage/v1/b/{bucket}/o?{query}", timeout=30) as response:
        page = json.loads(response.read())
      names += [item["name"] for item in page.get("items", [])]
      token = page.get("nextPageToken", "")
      if not token:
        return names

  def stop(self) -> None:
    if self.process.stdin:
      self.process.stdin.close()
    try:
      self.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
      self.process.kill()
      self.process.wait()


def _direct() -> urllib.request.OpenerDirector:
  """urllib without proxies: the tests' own look at the emulator must not pass through the TLS forwarder."""
  return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def missing_requirements() -> str | None:
  """Why the emulator cannot run here, or None."""
  if importlib.util.find_spec("gcp_storage_emulator") is None:
    return "gcp-storage-emulator is not installed (pip install -e '.[test]')"
  if shutil.which("openssl") is None:
    return "the openssl command is missing (it makes the emulator's throwaway TLS certificate)"
  return None


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _certificates(folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
  """(CA certificate, server certificate, server key): a throwaway CA and a certificate for HOSTS it signed."""
  ca_key, ca, key, csr, cert = (folder / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
  ext = folder / "san.ext"
  ext.write_text("subjectAltName=" + ",".join(f"DNS:{h}" for h in HOSTS) + "\n")
  run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)
  run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
      "-subj", "/CN=prompt_tuning test CA")
  run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={HOSTS[0]}")
  run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(cert),
      "-days", "2", "-extfile", str(ext))
  return ca, cert, key


def start(folder: pathlib.Path, timeout: float = 60.0) -> FakeGcs:
  """Starts the emulator and the forwarder on free loopback ports; `folder` holds the certificates."""
  folder.mkdir(parents=True, exist_ok=True)
  ca, cert, key = _certificates(folder)
  port, proxy_port = _free_port(), _free_port()
  with open(folder / "emulator.log", "w") as log:
    process = subprocess.Popen([sys.executable, __file__, f"--port={port}", f"--proxy_port={proxy_port}",
                                f"--cert={cert}", f"--key={key}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=log, text=True)  # the child exits when its stdin closes: the test ended
  ready = process.stdout.readline() if process.stdout else ""
  if "ready" not in ready:
    process.kill()
    raise RuntimeError(f"the GCS emulator did not start: {(folder / 'emulator.log').read_text()[-2000:]}")
  endpoint = f"http://127.0.0.1:{port}"
  deadline = time.time() + timeout
  while True:
    try:
      with _direct().open(endpoint + "/", timeout=5) as response:
        response.read()
      break
    except OSError:
      if time.time() > deadline:
        process.kill()
        raise
      time.sleep(0.1)
  proxy = f"http://127.0.0.1:{proxy_port}"
  env = {
      # TensorStore (Orbax): its emulator endpoint, and a token so that it asks no metadata server for one.
      "TENSORSTORE_GCS_HTTP_URL": endpoint,
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": TOKEN,
      # google-cloud-storage, gcsfs.
      "STORAGE_EMULATOR_HOST": endpoint,
      # TensorFlow: libcurl's proxy and CA settings (TF has no endpoint setting), no GCE metadata probe.
      "https_proxy": proxy, "HTTPS_PROXY": proxy, "http_proxy": proxy, "HTTP_PROXY": proxy,
      "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost",
      "CURL_CA_BUNDLE": str(ca),
      "NO_GCE_CHECK": "true",
  }
  return FakeGcs(endpoint, env, process)


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
  """`env` set in os.environ (libcurl and TensorStore read it at each request) for the block."""
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    yield
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


# ----------------------------------------------------------------------------------------- the child process
def _relay(client: socket.socket, first: bytes, upstream_port: int) -> None:
  """Sends `first`, then whatever `client` sends, to the emulator and its answers back, until either side closes
  (the emulator answers HTTP/1.0: one request per connection). One thread moves both ways, as a TLS socket may
  not be read and written from two threads at once."""
  with socket.create_connection(("127.0.0.1", upstream_port)) as upstream:
    upstream.sendall(first)
    other = {client: upstream, upstream: client}
    while True:
      pending = [client] if isinstance(client, ssl.SSLSocket) and client.pending() else []
      readable = pending or select.select([client, upstream], [], [], 120)[0]
      if not readable:
        return
      for source in readable:
        data = source.recv(65536)
        if not data:
          return
        other[source].sendall(data)


class _Forwarder(socketserver.ThreadingTCPServer):
  daemon_threads = True
  allow_reuse_address = True

  def __init__(self, port: int, upstream_port: int, context: ssl.SSLContext):
    self.upstream_port, self.context = upstream_port, context
    super().__init__(("127.0.0.1", port), _ForwardHandler)


class _ForwardHandler(socketserver.BaseRequestHandler):
  """CONNECT host:443 -> TLS ended here, the request inside relayed; `GET http://host/path` -> `GET /path`."""

  def handle(self) -> None:
    conn: socket.socket = self.request
    head = _read_head(conn)
    if head.startswith(b"CONNECT "):
      conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
      with self.server.context.wrap_socket(conn, server_side=True) as tls:
        head = _read_head(tls)
        if head:
          _relay(tls, _for_emulator(tls, head), self.server.upstream_port)
      return
    if head:
      _relay(conn, _for_emulator(conn, head), self.server.upstream_port)


def _read_head(conn: socket.socket) -> bytes:
  """The first bytes of a request, through the blank line that ends its headers (b"" if it closed first)."""
  head = b""
  while b"\r\n\r\n" not in head:
    chunk = conn.recv(65536)
    if not chunk:
      return b""
    head += chunk
  return head


def _for_emulator(client: socket.socket, head: bytes) -> bytes:
  """The request head as the emulator takes it: the path alone on the request line, and no `Expect:
  100-continue` (the emulator speaks HTTP/1.0 and never answers it, so libcurl would wait a second before each
  upload's body): the 100 is answered here."""
  end = head.index(b"\r\n\r\n")
  line, *headers = head[:end].split(b"\r\n")
  method, target, version = line.split(b" ", 2)
  if not target.startswith(b"/"):
    parts = urllib.parse.urlsplit(target.decode())
    target = ((parts.path or "/") + (f"?{parts.query}" if parts.query else "")).encode()
  kept = [h for h in headers if h.replace(b" ", b"").lower() != b"expect:100-continue"]
  if len(kept) != len(headers):
    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
  return b"\r\n".join([b" ".join([method, target, version]), *kept]) + head[end:]


def _patch_emulator() -> None:
  """What the emulator misreads or lacks, as GCS does it. TensorFlow's uploads carry both `Content-Length` and
  a chunked body (`Transfer-Encoding` wins, as HTTP says); its upload with an empty body (the folder marker
  `dir/`) reads as no body, which the media upload cannot take (it gets zero bytes); before renaming a folder it
  asks for the bucket's storage layout (answered: a flat namespace, as a bucket has by default). TensorStore
  needs the object's generation in the `x-goog-generation` header of each download."""
  from gcp_storage_emulator import server  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator.handlers import objects  # pylint: disable=g-import-not-at-top
  read_raw_data = server._read_raw_data  # pylint: disable=protected-access

  def read_body(handler):
    if (handler.headers.get("Transfer-Encoding") or "").lower() == "chunked" and "Content-Length" in handler.headers:
      del handler.headers["Content-Length"]
    return read_raw_data(handler)

  server._read_raw_data = read_body  # pylint: disable=protected-access
  media_upload = objects._media_upload  # pylint: disable=protected-access

  def upload(request, response, storage):
    if request.data is None:
      request._data = b""  # pylint: disable=protected-access
    return media_upload(request, response, storage)

  objects._media_upload = upload  # pylint: disable=protected-access

  download = objects.download

  def download_with_generation(request, response, storage, *args, **kwargs):
    download(request, response, storage, *args, **kwargs)
    if response.status in (http.HTTPStatus.OK, http.HTTPStatus.PARTIAL_CONTENT):
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
      response["x-goog-generation"] = str(obj["generation"])
      response["x-goog-metageneration"] = str(obj.get("metageneration", 1))

  objects.download = download_with_generation
  server.HANDLERS = tuple((regex, {m: download_with_generation if f is download else f for m, f in methods.items()})
                          for regex, methods in server.HANDLERS)

  def storage_layout(request, response, storage):
    name = request.params["bucket_name"]
    if name not in storage.buckets:
      response.status = http.HTTPStatus.NOT_FOUND
      return
    response.json({"kind": "storage#storageLayout", "bucket": name, "location": "US", "locationType": "multi-region",
                   "hierarchicalNamespace": {"enabled": False}})

  route = (r"^/storage/v1/b/(?P<bucket_name>[-.\w]+)/storageLayout$", {server.GET: storage_layout})
  server.HANDLERS = (route, *server.HANDLERS)


def _serve(port: int, proxy_port: int, cert: str, key: str) -> None:
  from gcp_storage_emulator.server import create_server  # pylint: disable=g-import-not-at-top
  import logging  # pylint: disable=g-import-not-at-top
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # one line per request, in the log
  logging.getLogger("gcp_storage_emulator.server").addFilter(lambda r: "should be handled as stream" not in r.msg)
  _patch_emulator()
  server = create_server("127.0.0.1", port, in_memory=True)
  server.start()
  context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
  context.load_cert_chain(cert, key)
  forwarder = _Forwarder(proxy_port, port, context)
  threading.Thread(target=forwarder.serve_forever, daemon=True).start()
  print("ready", flush=True)
  try:
    sys.stdin.read()  # until the test stops this process, or ends without stopping it (stdin closes)
  finally:
    forwarder.shutdown()
    server.stop()


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--port", type=int, required=True)
  parser.add_argument("--proxy_port", type=int, required=True)
  parser.add_argument("--cert", required=True)
  parser.add_argument("--key", required=True)
  flags = parser.parse_args()
  _serve(flags.port, flags.proxy_port, flags.cert, flags.key)
