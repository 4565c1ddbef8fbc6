"""Tests of autoresearch.harness.download against a real HTTP server on the loopback interface."""

from __future__ import annotations

import io
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from autoresearch.harness import download as dl


def parquet_bytes(texts: list[str], row_group_size: int = 2) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": texts, "id": list(range(len(texts)))}), buf, row_group_size=row_group_size)
    return buf.getvalue()


def shard_texts(index: int) -> list[str]:
    return [f"shard {index} doc {j} " + "x" * j for j in range(5)]


class FakeHub:
    """What the handler serves: files by name, plus an optional hook that overrides a response."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        # hook(name, nth_request) -> None (serve normally) or (status, body, declared_length)
        self.hook = None


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        hub: FakeHub = self.server.hub
        name = self.path.rsplit("/", 1)[-1]
        with hub.lock:
            hub.counts[name] += 1
            nth = hub.counts[name]
        reply = hub.hook(name, nth) if hub.hook else None
        if reply is None:
            reply = (200, hub.files[name], None) if name in hub.files else (404, b"not found", None)
        status, body, declared = reply
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) if declared is None else declared))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True


@pytest.fixture
def hub():
    """A threading HTTP server on 127.0.0.1; yields (FakeHub, base URL) and shuts it down afterwards."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.hub = FakeHub()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield server.hub, f"http://127.0.0.1:{server.server_address[1]}/datasets/x/resolve/main"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def serve_climbmix(hub: FakeHub, n: int) -> None:
    for i in [*range(n), dl.VAL_SHARD]:
        hub.files[dl.shard_name(i)] = parquet_bytes(shard_texts(i))


def leftovers(dest):
    return sorted(p.name for p in dest.iterdir()) if dest.exists() else []


def test_climbmix_downloads_train_and_pinned_val(hub, tmp_path):
    server, url = hub
    serve_climbmix(server, 3)
    dest = tmp_path / "climbmix"
    train, val = dl.download_climbmix(dest, 3, base_url=url, progress=False, backoff=0.01)
    assert [p.name for p in train] == ["shard_00000.parquet", "shard_00001.parquet", "shard_00002.parquet"]
    assert val == dest / "shard_06542.parquet"
    assert leftovers(dest) == sorted([p.name for p in train] + [val.name])
    for p in [*train, val]:
        assert pq.ParquetFile(p).schema_arrow.names == ["text", "id"]
        assert pq.ParquetFile(p).num_row_groups == 3  # 5 rows in groups of 2: read group by group
    assert list(dl.iter_parquet_texts(train)) == shard_texts(0) + shard_texts(1) + shard_texts(2)
    assert list(dl.iter_parquet_texts([val])) == shard_texts(dl.VAL_SHARD)
    capped = list(dl.iter_parquet_texts([val], doc_cap=12))
    assert capped == [t[:12] for t in shard_texts(dl.VAL_SHARD)] and max(map(len, capped)) == 12
    assert server.counts == Counter({p.name: 1 for p in [*train, val]})


def test_second_call_downloads_nothing(hub, tmp_path):
    server, url = hub
    serve_climbmix(server, 2)
    first = dl.download_climbmix(tmp_path, 2, base_url=url, progress=False)
    before = dict(server.counts)
    assert sum(before.values()) == 3
    second = dl.download_climbmix(tmp_path, 2, base_url=url, progress=False)
    assert second == first
    assert dict(server.counts) == before


def test_num_shards_is_capped_and_never_includes_val(hub, tmp_path, monkeypatch):
    server, url = hub
    monkeypatch.setattr(dl, "MAX_SHARD", 2)
    serve_climbmix(server, 2)
    train, val = dl.download_climbmix(tmp_path, 50, base_url=url, progress=False)
    assert [p.name for p in train] == ["shard_00000.parquet", "shard_00001.parquet"]
    assert val.name == "shard_06542.parquet" and val not in train
    assert set(server.counts) == {"shard_00000.parquet", "shard_00001.parquet", "shard_06542.parquet"}


def test_transient_500s_are_retried(hub, tmp_path):
    server, url = hub
    serve_climbmix(server, 2)
    server.hook = lambda name, nth: (500, b"boom", None) if nth <= 2 else None
    train, val = dl.download_climbmix(tmp_path, 2, base_url=url, progress=False, backoff=0.01)
    assert list(dl.iter_parquet_texts([val])) == shard_texts(dl.VAL_SHARD)
    assert server.counts == Counter({p.name: 3 for p in [*train, val]})


def test_429_is_retried(hub, tmp_path):
    server, url = hub
    serve_climbmix(server, 1)
    server.hook = lambda name, nth: (429, b"slow down", None) if nth == 1 else None
    dl.download_climbmix(tmp_path, 1, base_url=url, progress=False, backoff=0.01)
    assert server.counts == Counter({"shard_00000.parquet": 2, "shard_06542.parquet": 2})


def test_backoff_is_exponential(hub, tmp_path, monkeypatch):
    server, url = hub
    server.hook = lambda name, nth: (503, b"busy", None)
    sleeps = []
    monkeypatch.setattr(dl.time, "sleep", sleeps.append)
    with pytest.raises(dl.DownloadError):
        dl.download_tinystories(tmp_path, base_url=url, attempts=4, backoff=0.5, progress=False)
    assert sorted(sleeps) == sorted([0.5, 1.0, 2.0] * 2)


def test_persistent_500_raises_and_leaves_nothing(hub, tmp_path):
    server, url = hub
    serve_climbmix(server, 2)
    server.hook = lambda name, nth: (500, b"boom", None) if name == "shard_00001.parquet" else None
    dest = tmp_path / "d"
    with pytest.raises(dl.DownloadError) as info:
        dl.download_climbmix(dest, 2, base_url=url, progress=False, attempts=3, backoff=0.01)
    assert not isinstance(info.value, dl.NetworkUnavailable)
    assert "shard_00001.parquet" in str(info.value) and "500" in str(info.value)
    assert info.value.failed == ["shard_00001.parquet"]
    assert server.counts["shard_00001.parquet"] == 3
    # the good files are kept, the failed one left neither a partial shard nor a temp file behind
    assert leftovers(dest) == ["shard_00000.parquet", "shard_06542.parquet"]


@pytest.mark.parametrize("mode", ["garbage", "short", "cut_connection"])
def test_bad_bytes_are_a_failure(hub, tmp_path, mode):
    server, url = hub
    serve_climbmix(server, 1)
    good = server.files["shard_00000.parquet"]
    replies = {
        "garbage": (200, b"\x00garbage, not a parquet file" * 10, None),
        "short": (200, good[: len(good) // 2], None),  # honest length, but the file is cut
        "cut_connection": (200, good[: len(good) // 2], len(good)),  # server hangs up mid-body
    }
    server.hook = lambda name, nth: replies[mode]
    dest = tmp_path / "d"
    with pytest.raises(dl.DownloadError) as info:
        dl.download_climbmix(dest, 1, base_url=url, progress=False, attempts=2, backoff=0.01)
    assert not isinstance(info.value, dl.NetworkUnavailable)
    assert "shard_00000.parquet" in str(info.value)
    assert server.counts == Counter({"shard_00000.parquet": 2, "shard_06542.parquet": 2})
    assert leftovers(dest) == []


def test_parquet_without_text_column_is_rejected(hub, tmp_path):
    server, url = hub
    buf = io.BytesIO()
    pq.write_table(pa.table({"content": ["a", "b"]}), buf)
    server.files = {dl.shard_name(dl.VAL_SHARD): buf.getvalue()}
    with pytest.raises(dl.DownloadError, match="shard_06542"):
        dl.download_climbmix(tmp_path, 0, base_url=url, progress=False, attempts=1)
    assert leftovers(tmp_path) == []


def test_404_is_not_retried(hub, tmp_path):
    server, url = hub  # serves nothing: every file is a 404
    with pytest.raises(dl.DownloadError) as info:
        dl.download_climbmix(tmp_path, 2, base_url=url, progress=False, attempts=3, backoff=0.2)
    assert not isinstance(info.value, dl.NetworkUnavailable)
    assert "404" in str(info.value)
    assert server.counts == Counter({"shard_00000.parquet": 1, "shard_00001.parquet": 1, "shard_06542.parquet": 1})
    assert leftovers(tmp_path) == []


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def test_closed_port_is_network_unavailable(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/mirror"
    with pytest.raises(dl.NetworkUnavailable) as info:
        dl.download_climbmix(tmp_path / "d", 2, base_url=url, progress=False, attempts=2, backoff=0.01)
    message = str(info.value)
    assert url in message and "cpu" in message and dl.CLIMBMIX_ENV in message
    assert "network" in message.lower()
    assert leftovers(tmp_path / "d") == []
    with pytest.raises(dl.NetworkUnavailable, match="cpu"):
        dl.download_tinystories(tmp_path / "t", base_url=url, progress=False, attempts=1)


STORIES = "Once upon a time.\n<|endoftext|>\n\n  Tom had a dog.\nThe dog ran.\n<|endoftext|>\n<|endoftext|>\n Last één. "


def serve_tinystories(hub: FakeHub) -> None:
    hub.files["TinyStoriesV2-GPT4-train.txt"] = STORIES.encode()
    hub.files["TinyStoriesV2-GPT4-valid.txt"] = "Valid story.\n<|endoftext|>\n".encode()


def test_tinystories_download_and_split(hub, tmp_path):
    server, url = hub
    serve_tinystories(server)
    train, valid = dl.download_tinystories(tmp_path, base_url=url, progress=False)
    assert (train.name, valid.name) == ("TinyStoriesV2-GPT4-train.txt", "TinyStoriesV2-GPT4-valid.txt")
    assert list(dl.iter_tinystories_docs(train)) == ["Once upon a time.", "Tom had a dog.\nThe dog ran.", "Last één."]
    assert list(dl.iter_tinystories_docs(valid)) == ["Valid story."]
    dl.download_tinystories(tmp_path, base_url=url, progress=False)
    assert sum(server.counts.values()) == 2  # idempotent


@pytest.mark.parametrize("body", [b"", b"\xff\xfe\xfa not utf-8"])
def test_tinystories_rejects_empty_or_binary(hub, tmp_path, body):
    server, url = hub
    serve_tinystories(server)
    server.hook = lambda name, nth: (200, body, None) if name.endswith("valid.txt") else None
    with pytest.raises(dl.DownloadError, match="valid.txt"):
        dl.download_tinystories(tmp_path, base_url=url, progress=False, attempts=2, backoff=0.01)
    assert leftovers(tmp_path) == ["TinyStoriesV2-GPT4-train.txt"]


def test_env_vars_override_base_url(hub, tmp_path, monkeypatch):
    server, url = hub
    serve_climbmix(server, 1)
    serve_tinystories(server)
    monkeypatch.setenv(dl.CLIMBMIX_ENV, url)
    monkeypatch.setenv(dl.TINYSTORIES_ENV, url + "/")
    dl.download_climbmix(tmp_path / "c", 1, progress=False, attempts=1)
    dl.download_tinystories(tmp_path / "t", progress=False, attempts=1)
    assert set(server.counts) == {"shard_00000.parquet", "shard_06542.parquet",
                                  "TinyStoriesV2-GPT4-train.txt", "TinyStoriesV2-GPT4-valid.txt"}


def test_plain_progress_lines_when_not_a_tty(hub, tmp_path, capsys):
    server, url = hub
    serve_climbmix(server, 2)
    dl.download_climbmix(tmp_path, 2, base_url=url, progress=True)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3
    assert sorted(line.split()[1] for line in lines) == ["shard_00000.parquet", "shard_00001.parquet", "shard_06542.parquet"]
    dl.download_climbmix(tmp_path, 2, base_url=url, progress=False)
    assert capsys.readouterr().err == ""
