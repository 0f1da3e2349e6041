"""The per-key concurrency limit: how many of one key's jobs may be queued or running at once."""

import time
from collections.abc import Sequence

from redis.asyncio import Redis

from schemas import keys
from schemas.jobs import JobRecord, JobState
from service.errors import RateLimited

# A slot is reserved before its job's record is written; a record still missing this long after
# its reservation belongs to an enqueue that failed, and the slot is freed.
RESERVATION_GRACE_S = 30

# Runs atomically: frees the slots of finished (or never written) jobs, then reserves one slot
# per new job if all fit. Returns -1 when reserved, else the jobs the key has in flight.
_RESERVE = """
local now = tonumber(ARGV[2])
local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #members, 2 do
  local status = redis.call('HGET', ARGV[4] .. members[i], ARGV[5])
  local stale = not status and tonumber(members[i + 1]) < now - tonumber(ARGV[3])
  if stale or (status and status ~= ARGV[6] and status ~= ARGV[7]) then
    redis.call('ZREM', KEYS[1], members[i])
  end
end
local active = redis.call('ZCARD', KEYS[1])
if active + #ARGV - 8 > tonumber(ARGV[1]) then return active end
for i = 9, #ARGV do redis.call('ZADD', KEYS[1], now, ARGV[i]) end
redis.call('EXPIRE', KEYS[1], ARGV[8])
return -1
"""


class ConcurrencyLimit:
    """Reserves one slot per job of a key, up to `limit` (0: no limit)."""

    def __init__(self, redis: Redis, limit: int, ttl_s: int, retry_after_s: int) -> None:
        self.limit = limit
        self.ttl_s = ttl_s
        self.retry_after_s = retry_after_s
        self._reserve = redis.register_script(_RESERVE)

    async def reserve(self, principal: str, job_ids: Sequence[str]) -> None:
        """Count `job_ids` among the key's jobs in flight; RateLimited (nothing counted) when
        they would take it past the limit."""
        if self.limit == 0 or not job_ids:
            return
        active = int(
            await self._reserve(
                keys=[keys.active_jobs(principal)],
                args=[
                    self.limit,
                    time.time(),
                    RESERVATION_GRACE_S,
                    keys.job_record(""),
                    JobRecord.STATUS,
                    JobState.QUEUED.value,
                    JobState.RUNNING.value,
                    self.ttl_s,
                    *job_ids,
                ],
            )
        )
        if active >= 0:
            raise RateLimited(
                f"This key has {active} jobs queued or running, of at most {self.limit}"
                + (f"; this request brings {len(job_ids)}." if len(job_ids) > 1 else "."),
                retry_after=self.retry_after_s,
            )
