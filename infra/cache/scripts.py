"""The cache levels' Lua scripts: each runs atomically in Redis, in one round trip.

Workers share Redis, so a level's bookkeeping (the index of entries scored by expiry, each
entry's size and the level's byte total) must change in the same step as the entry itself;
otherwise two workers writing at once could both see room and overfill the level.
"""

from __future__ import annotations

from typing import Final

GET_TTL_SCRIPT: Final = """
local value = redis.call('GET', KEYS[1])
redis.call('LPUSH', KEYS[2], value and '1' or '0')
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[1]) - 1)
return {value, redis.call('PTTL', KEYS[1])}
"""
"""A lookup that also appends 1 (hit) or 0 (miss) to the level's list of recent lookups,
trimmed to ``ARGV[1]`` entries, and returns the entry's remaining time to live in ms.

``KEYS``: the entry, the level's recent-lookups list. Returns ``{value or nil, pttl_ms}``.
"""

SET_SCRIPT: Final = """
local key, idx, sizes, total = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local value = ARGV[1]
local ttl = tonumber(ARGV[2])
-- Redis's clock, not a worker's: workers whose clocks differ still agree on what expired.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local maxb = tonumber(ARGV[4])
local purge = tonumber(ARGV[5])
local function forget(k)
  local s = tonumber(redis.call('HGET', sizes, k) or '0')
  redis.call('HDEL', sizes, k)
  redis.call('ZREM', idx, k)
  redis.call('DECRBY', total, s)
end
for _, k in ipairs(redis.call('ZRANGEBYSCORE', idx, '-inf', now, 'LIMIT', 0, purge)) do
  forget(k)
  redis.call('DEL', k)
end
local size
if ARGV[6] == 'track' then
  -- An entry another structure owns (a semantic stream): record its current size, and move its
  -- expiry only later (a short-lived addition never shortens the whole stream's life).
  size = tonumber(value)
  if size > maxb then return -1 end
  redis.call('DECRBY', total, tonumber(redis.call('HGET', sizes, key) or '0'))
  redis.call('HSET', sizes, key, size)
  redis.call('ZADD', idx, 'GT', now + ttl * 1000, key)
  redis.call('ZADD', idx, 'NX', now + ttl * 1000, key)
else
  size = string.len(value) + string.len(key)
  if size > maxb then return -1 end
  if redis.call('HEXISTS', sizes, key) == 1 then forget(key) end
  redis.call('SET', key, value, 'EX', ttl)
  redis.call('HSET', sizes, key, size)
  redis.call('ZADD', idx, now + ttl * 1000, key)
end
local t = redis.call('INCRBY', total, size)
local evicted = 0
while t > maxb do
  -- The entry closest to expiry, unless that is the one just written: then the next one.
  local first = redis.call('ZRANGE', idx, 0, 1)
  local victim = first[1]
  if victim == key then victim = first[2] end
  if not victim then break end
  forget(victim)
  redis.call('DEL', victim)
  t = tonumber(redis.call('GET', total) or '0')
  evicted = evicted + 1
end
return evicted
"""
"""Store a value in a level with a byte limit.

``KEYS``: the entry, the level's index (a sorted set of entry keys scored by expiry in ms), its
sizes hash (bytes per entry) and its byte total. ``ARGV``: the value (or, in ``track`` mode, the
size in bytes of an entry another structure wrote), the TTL in seconds, the caller's clock in ms
(unused: Redis's clock decides), the level's byte limit, how many expired entries to drop first
(bounded work per write) and the mode (``set`` or ``track``). While the level is over its limit,
the entry closest to expiry is evicted. Returns the number evicted, or -1 when the value alone
exceeds the limit (nothing stored).
"""

DELETE_SCRIPT: Final = """
local idx, sizes, total = KEYS[1], KEYS[2], KEYS[3]
local n = 0
for i = 1, #ARGV do
  local k = ARGV[i]
  local s = tonumber(redis.call('HGET', sizes, k) or '0')
  redis.call('HDEL', sizes, k)
  redis.call('ZREM', idx, k)
  redis.call('DECRBY', total, s)
  n = n + redis.call('DEL', k)
end
return n
"""
"""Delete the entries named in ``ARGV`` and their bookkeeping (``KEYS``: index, sizes, total).

Returns how many entries existed.
"""
