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
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image

from library.joycaption.generation import CaptionJob, Generation
from library.joycaption.http_exchange import CrossOriginRedirect, ExchangeTimeout, TooLarge, exchange
from library.errors import FatalError
from library.files.image_io import open_image, shrink_to_pixels
from library.joycaption.prompts import SYSTEM_PROMPT

logger = logging.getLogger(__name__)

DEFAULT_KEY_ENV = "OPENAI_API_KEY"
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
FATAL_STATUS = {401: "the server refused the API key", 403: "the server refused access",
                404: "the server has no such endpoint or model"}
MAX_RETRY_AFTER = 300.0  # longer Retry-After values are cut to this (and the wait is logged)
MAX_RESPONSE_BYTES = 4 * 1024 * 1024  # a caption answer is a few kB; more means a broken or hostile server
REDACTED = "[API key]"


@dataclass(frozen=True)
class JpegDataUrlLoader:
    """Picklable worker job: path -> (base64 JPEG data URL of the image, original size); the image is squashed to
    size x size, or with size 0 kept in its aspect and shrunk only above max_pixels."""

    size: int = 384
    quality: int = 95
    max_pixels: int | None = None

    def __call__(self, path: Path) -> tuple[str, tuple[int, int]]:
        img, original = open_image(path)
        if self.size and img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), Image.LANCZOS)
        elif not self.size:
            img = shrink_to_pixels(img, self.max_pixels)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=self.quality)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), original


class ApiFatal(FatalError):
    """A server answer that will not change on retry and applies to every image (bad key, wrong model or URL)."""


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None, asked: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after
        self.asked = asked  # the server's Retry-After before the cap


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


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds a Retry-After header (delta seconds or an HTTP date) asks for; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
        return max(0.0, seconds) if seconds == seconds else None  # NaN is no answer
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header, capped at MAX_RETRY_AFTER; None when absent."""
    seconds = retry_after_seconds(value)
    return None if seconds is None else min(MAX_RETRY_AFTER, seconds)


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
        timeout: seconds one request may take in all (connect, upload, the whole answer) before it is retried.
        retries: retries per request on 429, 5xx, timeouts and dropped connections.
        backoff: first retry delay in seconds, doubled each time (Retry-After wins when the server sends it).
        image_size: images are squashed to this square before upload (JoyCaption's input is 384; 0 = as they are).
        system_prompt: the system turn of every request (None or empty: no system turn).
        max_pixels: with image_size 0, larger images are shrunk (aspect kept) to this many pixels before upload.
        max_response_bytes: a longer answer is that image's error (never written).

    The API key goes only to the origin of api_base (a redirect elsewhere is not followed) and is replaced by
    "[API key]" in every message, error and caption text that comes back from the server.
    """

    def __init__(self, api_base: str, model: str | None = None, key_env: str = DEFAULT_KEY_ENV,
                 concurrency: int = 4, timeout: float = 120.0, retries: int = 5, backoff: float = 1.0,
                 image_size: int = 384, system_prompt: str | None = SYSTEM_PROMPT, key_required: bool = False,
                 max_response_bytes: int = MAX_RESPONSE_BYTES, max_pixels: int | None = None):
        self.base = normalize_base(api_base)
        self.key = os.environ.get(key_env, "").strip() or None
        if key_required and not self.key:
            raise FatalError(f"--api_key_env {key_env}: that environment variable is not set or empty")
        self.model = model
        self.concurrency = max(1, int(concurrency))
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self.backoff = max(0.0, float(backoff))
        self.image_size, self.max_pixels = image_size, max_pixels
        self.system_prompt = system_prompt
        self.max_response_bytes = max(1, int(max_response_bytes))
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="joycaption-api")
        self._rng = random.Random(0)
        self._rng_lock = threading.Lock()
        self._closed = threading.Event()

    # ----- HTTP -----
    def redact(self, text: str) -> str:
        """`text` with the API key replaced (a server may echo it back in an error or an answer)."""
        return text.replace(self.key, REDACTED) if self.key and text else text

    def _request(self, path: str, payload: dict | None, timeout: float) -> dict:
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        url = self.base + path
        try:
            answer = exchange("GET" if data is None else "POST", url, data, headers, timeout, self.max_response_bytes)
        except ExchangeTimeout:
            raise _Retryable(f"no complete answer within {timeout:g} s (--api_timeout)") from None
        except TooLarge:
            raise RuntimeError(f"the server's answer is larger than {self.max_response_bytes / 2**20:g} MiB: "
                               "refused (a caption is a few kB)") from None
        except CrossOriginRedirect as exc:
            raise ApiFatal(f"{url}: the server redirects to {exc}, another origin: not followed, so the API key "
                           "goes nowhere else; give the final address as --api_base") from None
        except (OSError, http.client.HTTPException) as exc:
            why = getattr(exc, "strerror", None) or f"{exc.__class__.__name__}: {exc}"
            raise _Retryable(self.redact(f"connection failed: {why}")) from None
        body = answer.body
        if not 200 <= answer.status < 300:
            reason = self.redact(f"HTTP {answer.status}: {_error_text(body) or http.client.responses.get(answer.status, '')}")
            if answer.status in RETRY_STATUS:
                raw = answer.headers.get("retry-after")
                raise _Retryable(reason, parse_retry_after(raw), retry_after_seconds(raw)) from None
            if answer.status in FATAL_STATUS:
                raise ApiFatal(f"{url}: {FATAL_STATUS[answer.status]} ({reason})") from None
            raise RuntimeError(reason) from None
        try:
            return json.loads(body.decode("utf-8"))
        except ValueError:
            raise RuntimeError(self.redact(f"the server answered something that is not JSON: {body[:120]!r}")) from None

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
                    capped = f" (it asked for {exc.asked:.0f} s; {MAX_RETRY_AFTER:.0f} s at most)" \
                        if exc.asked is not None and exc.asked > exc.retry_after else ""
                    logger.warning("%s: waiting %.0f s as the server asks (Retry-After)%s before attempt %d of %d",
                                   exc, delay, capped, attempt + 2, self.retries + 1)
                else:
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
            "messages": ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + [
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
        seed = job.seed if job.seed is not None else s.seed
        if seed is not None:
            body["seed"] = seed % 2**31  # the image's own seed; servers take 32-bit seeds
        return body

    def caption_one(self, data_url: str, job: CaptionJob) -> Generation:
        answer = self._with_retries("/chat/completions", self.payload(data_url, job))
        try:
            choice = answer["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise RuntimeError(self.redact(f"unexpected answer from the server: {str(answer)[:200]}")) from None
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return Generation(text=self.redact(str(content or "")).strip(), hit_limit=choice.get("finish_reason") == "length")

    # ----- the backend protocol of library.joycaption.job -----
    def loader(self) -> JpegDataUrlLoader:
        return JpegDataUrlLoader(self.image_size, max_pixels=self.max_pixels)

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
