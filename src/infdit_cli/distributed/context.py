"""Rank topology from torchrun's environment, the process group, and one-line errors for lost peers.

torchrun (or any launcher that sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT)
starts one process per device; everything here reads that environment, so the same command runs
alone, on N GPUs of one machine, or across nodes. Any failure of a peer (killed, crashed,
unreachable, never started) becomes a `DistributedError` with one line for stderr, never a hang:
every wait is bounded by `INFDIT_DIST_TIMEOUT` seconds. Waits that legitimately last longer (a rank
still busy with its share of the files) are waits on a peer's heartbeat: a thread of every rank
counts in the job's store, and a peer whose count stands still for the timeout is lost.
"""

from __future__ import annotations

import datetime
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from infdit_cli.device import count as cuda_count
from infdit_cli.device import select as select_cuda
from infdit_cli.errors import InfditError

DEFAULT_TIMEOUT_S = 900.0
TIMEOUT_ENV = "INFDIT_DIST_TIMEOUT"


class DistributedError(InfditError):
    """A peer rank failed, vanished or disagreed; the message is one line naming this rank."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: global rank, world size and the device index on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_root(self) -> bool:
        return self.rank == 0


SINGLE = Ranks()


def ranks_from_env(env: Mapping[str, str] | None = None) -> Ranks:
    """Read torchrun's variables; a plain run (none set, or WORLD_SIZE=1) is rank 0 of 1."""
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise DistributedError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise DistributedError(f"bad rank environment: RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}")
    return Ranks(rank, world, local)


def timeout_seconds(env: Mapping[str, str] | None = None) -> float:
    """How long any wait for a peer may last before the job ends with an error."""
    env = os.environ if env is None else env
    try:
        value = float(env.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError:
        raise DistributedError(f"{TIMEOUT_ENV} must be a number of seconds") from None
    if value <= 0:
        raise DistributedError(f"{TIMEOUT_ENV} must be positive")
    return value


def rank_device(requested: torch.device, ranks: Ranks) -> torch.device:
    """CUDA ranks each take the GPU numbered by LOCAL_RANK; CPU and MPS are shared."""
    if requested.type != "cuda" or not ranks.distributed:
        return requested
    count = cuda_count()
    if ranks.local_rank >= count:
        raise DistributedError(f"rank {ranks.rank}: LOCAL_RANK {ranks.local_rank} but only {count} CUDA device(s)")
    select_cuda(ranks.local_rank)
    return torch.device("cuda", ranks.local_rank)


def _first_line(exc: BaseException) -> str:
    """The gist of a backend error: gloo prefixes a source path and appends advice; keep the middle."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)  # "[/path/pair.cc:545] "
    text = re.sub(r"\s*\[?\d+\.\d+\.\d+\.\d+\]?:\d+", "", text)  # addresses and ports
    sentences = [t for t in text.split(". ") if not t.startswith(("This is typically", "Check the logs", "GLHF"))]
    return ". ".join(sentences).rstrip(".:")[:160]


@contextmanager
def peer_errors(ranks: Ranks, what: str) -> Iterator[None]:
    """Turn any communication failure inside the block into one DistributedError line."""
    try:
        yield
    except DistributedError:
        raise
    except (RuntimeError, TimeoutError, ConnectionError) as exc:  # DistError, DistBackendError are RuntimeErrors
        raise DistributedError(
            f"rank {ranks.rank} of {ranks.world}: {what} failed, a peer rank stopped or is unreachable "
            f"({_first_line(exc)})") from None


class Heartbeat:
    """A thread that counts in the job's store while this process lives (SIGSTOP, a crash or a lost
    node stop it), so peers can tell a busy rank from a lost one without a deadline on the work."""

    def __init__(self, store: Any, rank: int, period_s: float) -> None:
        self.store, self.rank, self.period = store, rank, period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="infdit-heartbeat", daemon=True)
        self._thread.start()

    @staticmethod
    def key(rank: int) -> str:
        return f"infdit/alive/{rank}"

    def _run(self) -> None:
        while True:
            try:
                self.store.add(self.key(self.rank), 1)
            except Exception:  # noqa: BLE001 - the store is gone: the job is ending
                return
            if self._stop.wait(self.period):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.period + 1)


_heartbeat: Heartbeat | None = None
POLL_S = 0.05  # how often a wait on the store looks again


def job_store() -> Any:
    """The process group's key-value store (hosted by rank 0 or torchrun's agent); None outside a job."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return None
    return dist.distributed_c10d._get_default_store()


def await_key(ranks: Ranks, key: str, poster: int, what: str) -> bytes:
    """The value rank `poster` sets under `key` in the job's store, however long `poster` works; a
    poster whose heartbeat stands still for `INFDIT_DIST_TIMEOUT` seconds is lost (DistributedError)."""
    store, limit = job_store(), timeout_seconds()
    last, since = None, time.monotonic()
    with peer_errors(ranks, what):
        while not store.check([key]):
            beats = store.add(Heartbeat.key(poster), 0)
            now = time.monotonic()
            if beats != last:
                last, since = beats, now
            elif now - since > limit:
                raise DistributedError(f"rank {ranks.rank} of {ranks.world}: {what} failed, rank {poster} has not "
                                       f"answered for {limit:g} s (stopped or unreachable)")
            time.sleep(POLL_S)
        return store.get(key)


def start(ranks: Ranks, device: torch.device) -> None:
    """Join the process group (gloo for CPU tensors, NCCL for CUDA ones) and start beating; no-op for a
    single process."""
    import torch.distributed as dist

    global _heartbeat
    if not ranks.distributed or dist.is_initialized():
        return
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    with peer_errors(ranks, f"joining the job at {os.environ.get('MASTER_ADDR', '?')}:"
                            f"{os.environ.get('MASTER_PORT', '?')}"):
        dist.init_process_group(backend, rank=ranks.rank, world_size=ranks.world,
                                timeout=datetime.timedelta(seconds=timeout_seconds()))
    _heartbeat = Heartbeat(job_store(), ranks.rank, min(5.0, timeout_seconds() / 4))


def stop() -> None:
    """Leave the process group (quietly: after a peer failure there is nobody to say goodbye to)."""
    import torch.distributed as dist

    global _heartbeat
    if _heartbeat is not None:
        _heartbeat.stop()
        _heartbeat = None
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except RuntimeError:
            pass


def all_gather(ranks: Ranks, obj: Any, what: str) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    if not ranks.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * ranks.world
    with peer_errors(ranks, what):
        dist.all_gather_object(out, obj)
    return out


class Peers:
    """This rank's channels to the others over torch.distributed: objects, boundary columns, strips.

    Every wait is bounded by `INFDIT_DIST_TIMEOUT`: the process group's timeout (NCCL's watchdog for
    CUDA tensors, whose waits only order the GPU stream and never block the host), explicitly on
    gloo's point-to-point waits. A test stands in a loopback with the same methods (threads).
    """

    def __init__(self, ranks: Ranks) -> None:
        self.ranks = ranks
        self.timeout = datetime.timedelta(seconds=timeout_seconds())

    def all_gather(self, obj: Any, what: str) -> list[Any]:
        """Every rank's `obj` (picklable), in rank order."""
        return all_gather(self.ranks, obj, what)

    def isend(self, tensor: Tensor, dst: int, what: str) -> Callable[[], None]:
        """Start sending `tensor` to rank `dst`; returns the wait for its completion (keep `tensor` till then)."""
        import torch.distributed as dist

        with peer_errors(self.ranks, what):
            work = dist.isend(tensor, dst=dst)

        def wait() -> None:
            with peer_errors(self.ranks, what):
                self._wait(work, tensor)

        return wait

    def recv(self, tensor: Tensor, src: int, what: str) -> None:
        """Receive into `tensor` from rank `src`."""
        import torch.distributed as dist

        with peer_errors(self.ranks, what):
            self._wait(dist.irecv(tensor, src=src), tensor)

    def _wait(self, work: Any, tensor: Tensor) -> None:
        if tensor.device.type == "cuda":
            work.wait()  # the stream waits, the host goes on launching; the watchdog bounds it
        else:
            work.wait(self.timeout)

    def gather(self, tensor: Tensor, what: str, everyone: bool) -> list[Tensor] | None:
        """Every rank's `tensor` (one shape on every rank), in rank order: on rank 0 only (None elsewhere),
        or on every rank with `everyone`."""
        import torch.distributed as dist

        parts = [torch.empty_like(tensor) for _ in range(self.ranks.world)] if everyone or self.ranks.is_root \
            else None
        with peer_errors(self.ranks, what):
            if everyone:
                dist.all_gather(parts, tensor)  # type: ignore[arg-type]
            else:
                dist.gather(tensor, parts, dst=0)
        return parts


def broadcast(ranks: Ranks, obj: Any, what: str) -> Any:
    """Rank 0's `obj` on every rank."""
    if not ranks.distributed:
        return obj
    import torch.distributed as dist

    box = [obj if ranks.is_root else None]
    with peer_errors(ranks, what):
        dist.broadcast_object_list(box, src=0)
    return box[0]
