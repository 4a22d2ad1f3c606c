#!/usr/bin/env python3
"""A loopback HTTP server for tests/test_http.cpp (standard library only).

Prints "listening on 127.0.0.1:PORT" and serves:
  /plain    a Content-Length body
  /chunked  a chunked body (several chunks, with an extension and a trailer)
  /close    a body delimited by the connection closing (HTTP/1.0 style)
  /garbage  a malformed status line
  /truncated a Content-Length body cut short
"""
import http.server
import socketserver
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/plain":
            body = b"hello, plain world\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Test", "plain")
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (b"hello, ", b"chunked ", b"world" * 1000):
                self.wfile.write(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
            self.wfile.write(b"0\r\nX-Trailer: yes\r\n\r\n")
        elif self.path == "/close":
            self.wfile.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the close")
            self.close_connection = True
        elif self.path == "/garbage":
            self.wfile.write(b"NOT HTTP AT ALL\r\n\r\n")
            self.close_connection = True
        elif self.path == "/truncated":
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
            self.close_connection = True
        else:
            self.send_error(404)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


if __name__ == "__main__":
    server = Server(("127.0.0.1", 0), Handler)
    print("listening on 127.0.0.1:%d" % server.server_address[1], flush=True)
    server.serve_forever()
