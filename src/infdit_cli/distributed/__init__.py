"""Scale-out with torch.distributed: files across ranks, one image across ranks, resumable sampling."""

from infdit_cli.distributed.batch import RankReport, Session, Summary, join
from infdit_cli.distributed.context import DistributedError, Ranks, ranks_from_env

__all__ = ["DistributedError", "RankReport", "Ranks", "Session", "Summary", "join", "ranks_from_env"]
