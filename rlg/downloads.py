"""Every file rlg-bench fetches itself, through two doors with one atomic write behind them.

* ``hub_file``: a file of a Hugging Face hub repo (model or dataset) through ``huggingface_hub``, so
  ``HF_HUB_OFFLINE``, ``HF_HOME`` / the shared hub cache, ``HF_ENDPOINT`` mirrors and tokens work as
  they do for the checkpoints. Pin ``revision`` to a commit for bit-stable inputs; the commit that
  was actually read is returned either way (for the run metadata).
* ``url_file``: any other URL (raw GitHub files, release assets), pinned by sha256, with retries
  and exponential back-off, cached under a directory, written with the one atomic write
  (``rlg.files.atomic_write``: a killed download never leaves a half file under the final name).

Offline: ``offline`` when given, else huggingface_hub's rule (``rlg.runtime.hub_offline``:
HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE), the same rule as the pair loader and the evaluators.

Both raise DownloadError with one message that says what was wanted, why it failed, and the fix
(a local copy and the option that points at it).
"""

from __future__ import annotations

import logging
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from rlg.files import StoreError, atomic_write, sha256_bytes, sha256_file
from rlg.runtime import hub_offline

log = logging.getLogger(__name__)
USER_AGENT = "rlg-bench (+https://arxiv.org/abs/2508.21016)"


class DownloadError(RuntimeError):
    """A file could not be fetched or did not match its pin; the message names the fix."""


@dataclass(frozen=True)
class Fetched:
    """A fetched file: where it is on disk, its bytes' sha256, and (hub files) the commit read."""
    path: Path
    sha256: str
    commit: str | None = None

    def read_bytes(self) -> bytes:
        return self.path.read_bytes()


def _snapshot_commit(path: Path) -> str | None:
    """The commit of a file in huggingface_hub's cache layout (.../snapshots/<commit>/<file>)."""
    parts = Path(path).parts
    if "snapshots" in parts:
        i = parts.index("snapshots")
        if i + 1 < len(parts) and re.fullmatch(r"[0-9a-f]{40}", parts[i + 1]):
            return parts[i + 1]
    return None


def hub_file(repo_id: str, filename: str, *, revision: str | None = None, repo_type: str = "dataset",
             cache_dir: str | Path | None = None, offline: bool | None = None, fix: str = "") -> Fetched:
    """``filename`` of hub repo ``repo_id`` at ``revision`` (None: the default branch, unpinned).

    Raises DownloadError naming the repo, revision, the reason (offline and not cached, unknown
    repo/revision/file, network) and ``fix`` (e.g. "prompts.path=/local/copy.json").
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    at = f"{repo_id}@{revision or 'main'}:{filename} ({repo_type} repo on the Hugging Face hub)"
    how = (f"hf download {repo_id} {filename} --repo-type {repo_type}"
           + (f" --revision {revision}" if revision else ""))
    tail = f" Fix: {how} on a machine with network access (same HF_HOME), or {fix}" if fix else f" Fix: {how}"
    try:
        path = Path(hf_hub_download(repo_id, filename, repo_type=repo_type, revision=revision,
                                    cache_dir=str(cache_dir) if cache_dir else None,
                                    local_files_only=hub_offline(offline)))
    except LocalEntryNotFoundError as exc:
        raise DownloadError(f"{at} is not in the local hub cache and offline mode is on (HF_HUB_OFFLINE=1) or the "
                            f"hub cannot be reached.{tail}") from exc
    except RevisionNotFoundError as exc:
        raise DownloadError(f"{at}: revision {revision!r} does not exist.{tail}") from exc
    except EntryNotFoundError as exc:
        raise DownloadError(f"{at}: the repo has no such file.{tail}") from exc
    except RepositoryNotFoundError as exc:
        raise DownloadError(f"{at}: no such repo (or it is private; set HF_TOKEN).{tail}") from exc
    except OSError as exc:  # requests' ConnectionError and friends are OSErrors
        raise DownloadError(f"could not download {at}: {type(exc).__name__}: {exc}.{tail}") from exc
    data_sha = sha256_file(path)
    return Fetched(path, data_sha, _snapshot_commit(path))


def url_file(url: str, dest: str | Path, *, sha256: str | None, offline: bool | None = None, retries: int = 3,
             timeout: float = 60.0, backoff: float = 1.0, fix: str = "") -> Fetched:
    """``dest`` if it exists and matches ``sha256``; else ``url`` downloaded (``retries`` more tries
    after the first, waiting backoff, 2*backoff, ... seconds), checked against ``sha256`` and
    written atomically to ``dest``. ``sha256=None`` accepts any content (its hash is returned so the
    caller can record it). Offline (``offline=True``, or HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE) nothing is downloaded.

    Raises DownloadError: offline and not cached, every try failed (the last reason is quoted), or
    the download's sha256 differs from the pin (upstream changed: the file is not written).
    """
    dest = Path(dest).expanduser()
    tail = f" Fix: {fix}" if fix else ""
    if dest.is_file():
        got = sha256_file(dest)
        if sha256 is None or got == sha256:
            return Fetched(dest, got)
        log.warning("cached %s has sha256 %s, expected %s; fetching it again", dest, got, sha256)
    if hub_offline(offline):
        fix_hint = tail or " Fix: download it on a machine with network access and put it at " + str(dest)
        raise DownloadError(f"{dest} is not cached and offline mode is on (HF_HUB_OFFLINE=1), so {url} is not "
                            f"downloaded.{fix_hint}")
    data: bytes | None = None
    last: Exception | None = None
    tries = 0
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        tries += 1
        try:
            req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
            with urllib.request.urlopen(req, timeout=timeout) as r:
                data = r.read()
            break
        except urllib.error.HTTPError as exc:
            last = exc
            if exc.code in (400, 401, 403, 404, 410):  # will not get better by trying again
                break
        except (OSError, ValueError) as exc:  # URLError, timeouts, resets; ValueError: a malformed URL
            last = exc
    if data is None:
        raise DownloadError(f"could not download {url} ({tries} {'try' if tries == 1 else 'tries'}, last: "
                            f"{type(last).__name__}: {last}).{tail}") from last
    got = sha256_bytes(data)
    if sha256 is not None and got != sha256:
        raise DownloadError(f"{url} has sha256 {got}, expected {sha256}: upstream changed, so it is not used.{tail}")
    try:
        atomic_write(dest, data)
    except StoreError as exc:
        raise DownloadError(f"could not cache {url} at {dest}: {exc}") from exc
    return Fetched(dest, got)
