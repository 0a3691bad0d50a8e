"""Helpers of scripts/testbed/neutron.sh, run by the testbed venv's python.

  neutron_api.py serve HOST PORT LOG_FILE CONFIG_FILE...
      Serves Neutron's REST API (neutron.wsgi.api:application: Neutron 29 ships no
      neutron-server script) on HOST:PORT with the standard library's WSGI server, one thread
      per request. Neutron's log goes to LOG_FILE, the access log to stderr.
  neutron_api.py probe-api URL
      Exit 0 when GET URL/v2.0/networks answers 200 (noauth admin headers), within 3 s.
  neutron_api.py probe-rpc TRANSPORT_URL
      Exit 0 when the RPC server consumes its queues (q-plugin, q-l3-plugin,
      q-reports-plugin) on the first broker of TRANSPORT_URL: before that, a call an agent
      sends is dropped (no queue is bound yet) and times out.
  neutron_api.py db-ready DB_URL
      Exit 0 when the database has Neutron's schema (an alembic_version row).
"""

import socketserver
import sys
import urllib.parse
import urllib.request
from wsgiref import simple_server

RPC_QUEUES = ("q-plugin", "q-l3-plugin", "q-reports-plugin")


def serve(host, port, log_file, config_files):
    # neutron.wsgi.api parses sys.argv when imported: give it only what it needs.
    sys.argv = ["neutron-api", "--log-file", log_file]
    for f in config_files:
        sys.argv += ["--config-file", f]
    from neutron.wsgi.api import application  # noqa: E402 (after argv)

    class Server(socketserver.ThreadingMixIn, simple_server.WSGIServer):
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 64

    class Handler(simple_server.WSGIRequestHandler):
        def log_message(self, format, *args):  # noqa: A002 (the base class's name)
            sys.stderr.write("%s %s\n" % (self.log_date_time_string(), format % args))

    httpd = simple_server.make_server(host, int(port), application, Server, Handler)
    sys.stderr.write("serving Neutron's API on http://%s:%s/\n" % (host, port))
    sys.stderr.flush()
    httpd.serve_forever()


def probe_api(url):
    req = urllib.request.Request(
        url.rstrip("/") + "/v2.0/networks",
        headers={"X-Project-Id": "testbed", "X-Roles": "admin", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=3) as r:
            return 0 if r.status == 200 else 1
    except Exception:
        return 1


def probe_rpc(transport_url):
    import amqp

    u = urllib.parse.urlsplit(transport_url)
    # rabbit://user:pass@host:port[,user:pass@host:port...]/vhost: the first broker.
    first = u.netloc.split(",")[0]
    creds, _, hostport = first.rpartition("@")
    user, _, password = creds.partition(":")
    host, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "5672")
    vhost = urllib.parse.unquote(u.path[1:]) or "/"
    conn = amqp.Connection(
        host="%s:%s" % (host.strip("[]") or "127.0.0.1", port or "5672"),
        userid=urllib.parse.unquote(user or "guest"),
        password=urllib.parse.unquote(password or "guest"),
        virtual_host=vhost,
        connect_timeout=3,
    )
    try:
        conn.connect()
        for q in RPC_QUEUES:
            ch = conn.channel()
            try:
                _, _, consumers = ch.queue_declare(q, passive=True)
            except amqp.exceptions.NotFound:
                return 1
            if consumers < 1:
                return 1
            ch.close()
        return 0
    except Exception:
        return 1
    finally:
        try:
            conn.close()
        except Exception:
            pass


def db_ready(db_url):
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(db_url)
        with engine.connect() as c:
            n = c.execute(sa.text("SELECT COUNT(*) FROM alembic_version")).scalar()
        return 0 if n else 1
    except Exception:
        return 1


def main(argv):
    if len(argv) >= 5 and argv[1] == "serve":
        serve(argv[2], argv[3], argv[4], argv[5:])
        return 0
    if len(argv) == 3 and argv[1] == "probe-api":
        return probe_api(argv[2])
    if len(argv) == 3 and argv[1] == "probe-rpc":
        return probe_rpc(argv[2])
    if len(argv) == 3 and argv[1] == "db-ready":
        return db_ready(argv[2])
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
