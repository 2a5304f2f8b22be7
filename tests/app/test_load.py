"""Load on the app's queue: 8 concurrent API requests against a queue of size 4. Every accepted request returns its
video, the others get a clear "queue full" error, none hangs, the server answers afterwards, and shutdown removes the
temporary files."""

import concurrent.futures
import os
import urllib.error
import urllib.request

import pytest

from tests.app.conftest import PROMPT_T2V, read_video, start_server

TINY = {"height": 64, "width": 64, "frames": 5, "steps": 2}


def test_eight_requests_against_a_queue_of_four():
    from gradio_client import Client

    server = start_server(queue_size=4)
    temp_dir = server.temp_dir
    try:
        client = Client(server.url, verbose=False)

        def one(seed):
            try:
                return "ok", client.predict(prompt=PROMPT_T2V, seed=seed, **TINY, api_name="/text_to_video")[0]
            except Exception as error:  # queue full comes back as an exception from the client
                return "error", f"{type(error).__name__}: {error}"

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(one, range(8), timeout=240))
        accepted = [value for status, value in outcomes if status == "ok"]
        refused = [value for status, value in outcomes if status == "error"]
        assert len(accepted) + len(refused) == 8
        assert 4 <= len(accepted) <= 5 and refused, outcomes  # 4 waiting (+ the one running when they arrived)
        for video in accepted:
            assert read_video(video).shape[0] == 5
        for message in refused:
            assert "queue is full" in message.lower(), message
        video, *_ = client.predict(prompt=PROMPT_T2V, **TINY, api_name="/text_to_video")
        assert read_video(video).shape[0] == 5
        assert os.listdir(os.path.join(temp_dir, "outputs"))
    finally:
        server.close()
    assert not os.path.exists(temp_dir)
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(server.url, timeout=5)
