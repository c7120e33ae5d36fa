"""JoyCaption through an OpenAI-compatible /v1/chat/completions server (vLLM, Ollama, LM Studio, llama.cpp, hosted)."""

from __future__ import annotations

import base64
import email.utils
import http.client
import io
import json
import logging
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image

from library.joycaption.generation import CaptionJob, Generation
from library.errors import FatalError
from library.image_io import open_image
from library.joycaption.prompts import SYSTEM_PROMPT

logger = logging.getLogger(__name__)

DEFAULT_KEY_ENV = "OPENAI_API_KEY"
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
FATAL_STATUS = {401: "the server refused the API key", 403: "the server refused access",
                404: "the server has no such endpoint or model"}
MAX_RETRY_AFTER = 300.0


@dataclass(frozen=True)
class JpegDataUrlLoader:
    """Picklable worker job: path -> (base64 JPEG data URL of the image squashed to size x size, original size)."""

    size: int = 384
    quality: int = 95

    def __call__(self, path: Path) -> tuple[str, tuple[int, int]]:
        img, original = open_image(path)
        if self.size and img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), Image.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=self.quality)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), original


class ApiFatal(FatalError):
    """A server answer that will not change on retry and applies to every image (bad key, wrong model or URL)."""


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


def normalize_base(url: str) -> str:
    """'http://h:8000' -> 'http://h:8000/v1'; '.../v1/chat/completions' -> '.../v1'; other paths kept."""
    url = url.strip().rstrip("/")
    if url.endswith("/chat/completions"):
        url = url[: -len("/chat/completions")]
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise FatalError(f"--api_base {url!r}: give an http(s) URL such as http://localhost:8000/v1")
    if parts.path in ("", "/"):
        url += "/v1"
    return url


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or an HTTP date), capped; None when absent."""
    if not value:
        return None
    value = value.strip()
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(value)))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return min(MAX_RETRY_AFTER, max(0.0, when.timestamp() - time.time()))
    except (TypeError, ValueError):
        return None


def _error_text(body: bytes) -> str:
    try:
        data = json.loads(body.decode("utf-8", "replace"))
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:200]
    err = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(err, dict):
        return str(err.get("message") or err.get("detail") or err)[:300]
    return str(err)[:300]


class ApiJoyCaption:
    """Client for one OpenAI-compatible server; thread-safe, `concurrency` requests in flight at most.

    Args:
        api_base: server URL, e.g. http://localhost:8000/v1 (vLLM) or http://localhost:11434/v1 (Ollama).
        model: the served model name; None = the first one the server lists.
        key_env: environment variable holding the API key (never passed on the command line).
        concurrency: parallel requests.
        timeout: seconds to wait for one answer before retrying.
        retries: retries per request on 429, 5xx, timeouts and dropped connections.
        backoff: first retry delay in seconds, doubled each time (Retry-After wins when the server sends it).
        image_size: images are squashed to this square before upload (JoyCaption's input is 384; 0 = as they are).
    """

    def __init__(self, api_base: str, model: str | None = None, key_env: str = DEFAULT_KEY_ENV,
                 concurrency: int = 4, timeout: float = 120.0, retries: int = 5, backoff: float = 1.0,
                 image_size: int = 384, system_prompt: str = SYSTEM_PROMPT, key_required: bool = False):
        self.base = normalize_base(api_base)
        self.key = os.environ.get(key_env, "").strip() or None
        if key_required and not self.key:
            raise FatalError(f"--api_key_env {key_env}: that environment variable is not set or empty")
        self.model = model
        self.concurrency = max(1, int(concurrency))
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self.backoff = max(0.0, float(backoff))
        self.image_size = image_size
        self.system_prompt = system_prompt
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="joycaption-api")
        self._rng = random.Random(0)
        self._rng_lock = threading.Lock()
        self._closed = threading.Event()

    # ----- HTTP -----
    def _request(self, path: str, payload: dict | None, timeout: float) -> dict:
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        req = urllib.request.Request(self.base + path, data=data, method="GET" if data is None else "POST")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.key:
            req.add_header("Authorization", f"Bearer {self.key}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            body = exc.read() if exc.fp is not None else b""
            reason = f"HTTP {exc.code}: {_error_text(body) or exc.reason}"
            if exc.code in RETRY_STATUS:
                raise _Retryable(reason, parse_retry_after(exc.headers.get("Retry-After"))) from None
            if exc.code in FATAL_STATUS:
                raise ApiFatal(f"{self.base}{path}: {FATAL_STATUS[exc.code]} ({reason})") from None
            raise RuntimeError(reason) from None
        except (socket.timeout, TimeoutError):
            raise _Retryable(f"no answer within {timeout:g} s") from None
        except urllib.error.URLError as exc:
            raise _Retryable(f"connection failed: {exc.reason}") from None
        except (ConnectionError, http.client.HTTPException) as exc:
            raise _Retryable(f"connection failed: {exc.__class__.__name__}: {exc}") from None
        try:
            return json.loads(body.decode("utf-8"))
        except ValueError:
            raise RuntimeError(f"the server answered something that is not JSON: {body[:120]!r}") from None

    def _with_retries(self, path: str, payload: dict) -> dict:
        attempt = 0
        while True:
            try:
                return self._request(path, payload, self.timeout)
            except _Retryable as exc:
                if attempt >= self.retries or self._closed.is_set():
                    raise RuntimeError(f"{exc} (gave up after {attempt + 1} attempts)") from None
                delay = self.backoff * (2 ** attempt)
                with self._rng_lock:
                    delay *= 0.75 + 0.5 * self._rng.random()
                if exc.retry_after is not None:
                    delay = exc.retry_after
                logger.debug("retrying in %.2f s: %s", delay, exc)
                if self._closed.wait(delay):  # the run ended (Ctrl-C): stop retrying
                    raise RuntimeError(f"{exc} (run stopped)") from None
                attempt += 1

    # ----- start-up check -----
    def check(self) -> None:
        """Fail fast with a clear FatalError when the server is unreachable or refuses the key; pick the model."""
        try:
            listing = self._request("/models", None, timeout=min(self.timeout, 15.0))
        except ApiFatal as exc:
            if "HTTP 404" not in str(exc):
                raise
            if not self.model:
                raise FatalError(f"{self.base}/models was not found: check --api_base (it usually ends in /v1) "
                                 "or pass --api_model NAME") from None
            listing = {}  # some servers do not list their models; the first request will tell
        except _Retryable as exc:
            if not str(exc).startswith("HTTP ") or not self.model:  # no answer at all, or nothing to go on
                raise FatalError(f"cannot reach the API server at {self.base} ({exc}); is it running? "
                                 "e.g. vllm serve fancyfeast/llama-joycaption-beta-one-hf-llava") from None
            logger.warning("%s/models answered %s; going on with --api_model %s", self.base, exc, self.model)
            listing = {}
        except RuntimeError:
            listing = {}
        served = [m.get("id") for m in listing.get("data", []) if isinstance(m, dict)] if listing else []
        if self.model is None:
            if not served:
                raise FatalError(f"{self.base} does not list its models: pass --api_model NAME")
            self.model = served[0]
            logger.info("using the server's model %s", self.model)
        elif served and self.model not in served:
            logger.warning("the server lists %s, not %s; asking for %s anyway", ", ".join(served), self.model,
                           self.model)

    # ----- captions -----
    def payload(self, data_url: str, job: CaptionJob) -> dict:
        """The chat-completions request body for one image and one prompt."""
        body = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": self.system_prompt},
                {"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": data_url}},
                    {"type": "text", "text": job.prompt},
                ]},
            ],
            "max_tokens": job.max_new_tokens,
            "stream": False,
        }
        s = job.sampling
        if s.greedy:
            body["temperature"] = 0.0
        else:
            body.update(temperature=s.temperature, top_p=s.top_p)
            if s.top_k:
                body["top_k"] = s.top_k  # vLLM, llama.cpp and Ollama accept it; OpenAI itself does not
        if s.seed is not None:
            body["seed"] = s.seed
        return body

    def caption_one(self, data_url: str, job: CaptionJob) -> Generation:
        answer = self._with_retries("/chat/completions", self.payload(data_url, job))
        try:
            choice = answer["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise RuntimeError(f"unexpected answer from the server: {str(answer)[:200]}") from None
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return Generation(text=(content or "").strip(), hit_limit=choice.get("finish_reason") == "length")

    # ----- the backend protocol of library.joycaption.job -----
    def loader(self) -> JpegDataUrlLoader:
        return JpegDataUrlLoader(self.image_size)

    def images_per_batch(self, prompts: Sequence[str], max_new_tokens: int) -> int:
        return self.concurrency * 4

    def prepare(self, items) -> list[str]:
        return [item.data for item in items]

    def run(self, data_urls: list[str], jobs: Sequence[CaptionJob]) -> list[Generation | str]:
        """All jobs concurrently; a job that still fails after its retries becomes its error text."""
        futures = [self._pool.submit(self.caption_one, data_urls[job.row], job) for job in jobs]
        out: list[Generation | str] = []
        fatal: ApiFatal | None = None
        for fut in futures:
            try:
                out.append(fut.result())
            except ApiFatal as exc:
                fatal = fatal or exc
                out.append(str(exc))
            except Exception as exc:  # noqa: BLE001 - one image's failure is data
                out.append(str(exc) or exc.__class__.__name__)
        if fatal is not None:
            raise fatal
        return out

    def close(self) -> None:
        """Cancel queued requests and stop retrying; requests already sent finish within --api_timeout."""
        self._closed.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
