"""A file server on 127.0.0.1 (port 0) in a thread, for the download tests.

  with FileServer({"a-1234abcd.pth": data}) as server:
    server.url("a-1234abcd.pth")          # http://127.0.0.1:<port>/a-1234abcd.pth

`server.drop` names files whose body is cut after half its declared Content-Length (the
connection closed: a dropped download); `server.requests` lists every requested path.
No test reaches any other address.
"""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Mapping


class FileServer:
  """Serves `files` (name -> bytes) at http://127.0.0.1:<free port>/<name>."""

  def __init__(self, files: Mapping[str, bytes]):
    self.files = dict(files)
    self.drop: set[str] = set()
    self.requests: list[str] = []
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_GET(self):  # noqa: N802 (http.server's name)
        name = self.path.lstrip("/")
        server.requests.append(name)
        if name not in server.files:
          self.send_error(404)
          return
        data = server.files[name]
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if name in server.drop:
          self.wfile.write(data[: len(data) // 2])
          self.wfile.flush()
          self.close_connection = True
          self.connection.shutdown(socket.SHUT_RDWR)
          return
        self.wfile.write(data)

      def log_message(self, *args):  # quiet
        pass

    self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

  @property
  def base(self) -> str:
    host, port = self._httpd.server_address[:2]
    return f"http://{host}:{port}"

  def url(self, name: str) -> str:
    return f"{self.base}/{name}"

  def __enter__(self) -> FileServer:
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._httpd.shutdown()
    self._httpd.server_close()
    self._thread.join(timeout=30)


def refused_url(name: str) -> str:
  """An http://127.0.0.1 URL nothing listens on (a port bound, then released)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  return f"http://127.0.0.1:{port}/{name}"
