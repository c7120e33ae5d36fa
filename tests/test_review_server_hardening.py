"""The edit server under attack: stale saves, symlinks out of the dataset, bad bodies, bursts, stalled clients."""

from __future__ import annotations

import json
import os
import select
import socket
import threading
import time

import pytest

from library.review.report import ReportOptions, thumbs_dir_for
from library.review.server import TOKEN_HEADER, ReviewServer, serve
from tests.fixtures.review_dataset import CAPTIONS, review_dataset
from tests.test_caption_report import Client, snapshot

pytestmark = pytest.mark.timeout(120)


def start(ds, tmp_path, **kwargs):
    server = ReviewServer(ds, ReportOptions(recursive=True, workers=0, progress=False),
                          thumbs_dir_for(tmp_path / "review.html"), **kwargs)
    thread = threading.Thread(target=serve, args=(server,), daemon=True)
    thread.start()
    return server, thread


@pytest.fixture()
def served(tmp_path):
    ds = tmp_path / "ds"
    review_dataset(ds)
    server, thread = start(ds, tmp_path, port=0)
    yield ds, Client(server)
    server.shutdown()
    thread.join(10)


def test_save_based_on_no_caption_does_not_overwrite_a_caption_written_since(served):
    ds, client = served
    caption = ds / "no_caption_yet.txt"
    caption.write_text("written by a tagger run meanwhile\n")  # the page still shows no caption
    status, body = client.post("/api/caption", {"path": "no_caption_yet.png", "text": "mine", "base": None})
    assert status == 409 and "changed on disk" in body["error"]
    assert caption.read_text() == "written by a tagger run meanwhile\n"
    caption.unlink()
    status, _ = client.post("/api/caption", {"path": "no_caption_yet.png", "text": "mine", "base": None})
    assert status == 200 and caption.read_text() == "mine\n"


def test_bad_base_and_tags_are_refused_not_crashing(served, tmp_path):
    ds, client = served
    before = snapshot(tmp_path)
    for base in (3, ["x"], {"a": 1}, True):
        status, body = client.post("/api/caption", {"path": "coffee.jpg", "text": "x", "base": base})
        assert status == 400 and "base" in body["error"], base
    for tags in (["ok", "two\nlines"], ["carriage\rreturn"], ["x" * 100_001], ["y" * 60_000, "z" * 60_000]):
        status, body = client.post("/api/tags", {"paths": ["coffee.jpg"], "op": "add", "tags": tags})
        assert status == 400, tags[0][:20]
    assert snapshot(tmp_path) == before
    status, _ = client.post("/api/caption", {"path": "coffee.jpg", "text": "cup", "base": CAPTIONS["coffee.jpg"]})
    assert status == 200  # the server is still up


def test_symlinks_out_of_the_dataset_are_never_read_or_written(tmp_path):
    ds = tmp_path / "ds"
    review_dataset(ds)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text("top secret caption\n")
    os.symlink(secret, ds / "passwd.png")  # an "image" that is a link to a file outside
    (ds / "rocket.txt").unlink()
    os.symlink(secret, ds / "rocket.txt")  # a caption that links outside
    (outside / "linked").mkdir()
    (ds / "landscapes" / "valley.png").rename(outside / "linked" / "valley.png")
    os.symlink(outside / "linked", ds / "shared")  # a folder that links outside
    server, thread = start(ds, tmp_path, port=0)
    try:
        client = Client(server)
        status, page = client.request("GET", "/")
        assert status == 200 and b"top secret" not in page
        assert client.request("GET", "/image/passwd.png")[0] == 403
        assert client.request("GET", "/image/shared/valley.png")[0] == 403
        status, data = client.request("GET", "/image/coffee.jpg")
        assert status == 200 and data == (ds / "coffee.jpg").read_bytes()
        status, body = client.post("/api/caption", {"path": "rocket.jpg", "text": "hacked"})
        assert status == 403 and "outside the dataset" in body["error"]
        status, body = client.post("/api/caption", {"path": "shared/valley.png", "text": "hacked"})
        assert status == 403
        status, body = client.post("/api/tags", {"paths": ["rocket.jpg", "shared/valley.png", "coffee.jpg"],
                                                 "op": "add", "tags": ["x"]})
        assert status == 200 and body["written"] == 1 and len(body["problems"]) == 2
        assert secret.read_text() == "top secret caption\n"
        assert sorted(p.name for p in (outside / "linked").iterdir()) == ["valley.png"]  # nothing written there
        assert os.path.islink(ds / "rocket.txt")
    finally:
        server.shutdown()
        thread.join(10)


def test_bursts_of_concurrent_saves_wait_in_the_listen_queue(tmp_path):
    """50 clients connecting at once, before the server gets to accept any: all are queued, none dropped or reset."""
    ds = tmp_path / "ds"
    review_dataset(ds)
    server = ReviewServer(ds, ReportOptions(recursive=True, workers=0, progress=False),
                          thumbs_dir_for(tmp_path / "review.html"), port=0)  # listening, not accepting yet
    socks = []
    thread = threading.Thread(target=serve, args=(server,), daemon=True)
    try:
        for _ in range(50):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", server.port))
            socks.append(s)
        _, connected, _ = select.select([], socks, [], 1.0)
        assert len(connected) == 50  # a listen backlog of 5 completes only 6 handshakes; the rest wait for SYN retries
        thread.start()
        body = json.dumps({"path": "coffee.jpg", "text": "burst"}).encode()
        for s in socks:
            s.setblocking(True)
            s.settimeout(10)
            s.sendall(f"POST /api/caption HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: application/json"
                      f"\r\n{TOKEN_HEADER}: {server.token}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        answers = [s.recv(64) for s in socks]
        assert all(a.startswith(b"HTTP/1.0 200") for a in answers), answers[:3]
        assert (ds / "coffee.txt").read_text() == "burst\n"
    finally:
        for s in socks:
            s.close()
        if thread.is_alive():
            server.shutdown()
            thread.join(10)
        else:
            server.server_close()


def test_a_stalled_client_does_not_delay_stopping(tmp_path):
    ds = tmp_path / "ds"
    review_dataset(ds)
    server, thread = start(ds, tmp_path, port=0)
    stalled = socket.create_connection(("127.0.0.1", server.port))
    stalled.sendall(f"POST /api/caption HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n".encode())  # and nothing more
    time.sleep(0.3)
    start_stop = time.monotonic()
    server.shutdown()
    thread.join(30)
    assert not thread.is_alive() and time.monotonic() - start_stop < 5
    stalled.close()


def test_loopback_server_refuses_other_ip_literals_as_host(served):
    ds, client = served
    port = client.server.port
    for host in (f"192.168.1.20:{port}", f"10.0.0.1:{port}", f"[fe80::1]:{port}", f"8.8.8.8:{port}"):
        assert client.request("GET", "/", headers={"Host": host})[0] == 403, host
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"127.0.0.2:{port}"):
        assert client.request("GET", "/", headers={"Host": host})[0] == 200, host
    body = json.dumps({"path": "coffee.jpg", "text": "x"})
    assert client.request("POST", "/api/caption", json.loads(body),
                          {"Host": f"192.168.1.20:{port}", "X-Captionkit-Token": client.server.token})[0] == 403
